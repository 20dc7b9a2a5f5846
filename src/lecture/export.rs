//! `vivachat replay FILE --export steps.md`: every step's narration and
//! tables as Markdown, for handouts and revision notes. The tables are
//! `inspect`'s, as plain text in code blocks, so any Markdown viewer keeps
//! their columns.

use std::fmt::Write as _;
use std::sync::Arc;

use super::page::inspection;
use super::record::Recording;
use super::replay::Cursor;
use crate::inspect::render::{render_parts, RenderOptions, View};

/// The whole handout: a title, then one section per step, step 0 first.
pub fn markdown(recording: Arc<Recording>, source: &str, view: &View) -> String {
    let mut cursor = Cursor::new(recording);
    let options = RenderOptions {
        color: false,
        rows: 20,
        view: view.clone(),
        source: source.to_string(),
        compact: false,
        width: Some(100),
    };
    let mut out = format!(
        "# Replay of `{source}`\n\n{} step(s). Each step is one input the core received, then what it \
         did to the five structures, each operation with its cost; the tables are the structures \
         after it: \"(new)\", \"(+N)\" and \"gone since the last frame\" mark what the step changed.\n",
        cursor.steps()
    );
    let mut previous = None;
    loop {
        let doc = inspection(&cursor, source);
        let _ = write!(out, "\n## Step {} of {}\n\n", cursor.step(), cursor.steps());
        match cursor.narration() {
            None => out += "Before the first input: the structures as the recording starts.\n",
            Some(n) => {
                let _ = writeln!(out, "**{}**\n\n{}\n", escape(&n.input), escape(&n.event));
                for op in &n.operations {
                    let _ = writeln!(out, "- `{op}`");
                }
            }
        }
        let (_, body) = render_parts(&doc, previous.as_ref(), &options);
        let _ = write!(out, "\n```text\n{}\n```\n", body.trim_matches('\n'));
        previous = Some(doc);
        if !cursor.forward() {
            return out;
        }
    }
}

/// Text from the chat (message texts, names) must not become Markdown.
/// (`+`, `-`, `#` and `>` only mean something at the start of a line.)
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    if text.starts_with(['+', '-', '#', '>']) {
        out.push('\\');
    }
    for c in text.chars() {
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
