//! Every `vivachat ...` command quoted in README.md and docs/ must parse with
//! the current command line, so the docs cannot drift from the code.

use std::path::Path;

use clap::{CommandFactory, Parser};
use vivachat::cli::Cli;

/// Splits a command line like a shell: whitespace, with '...' and "..." quoting.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => word.push(c),
        }
    }
    if started || !word.is_empty() {
        words.push(word);
    }
    words
}

/// The vivachat invocations in one line of shell: after `vivachat`,
/// `target/release/vivachat` or `cargo run --release --`, up to a pipe,
/// `&&`, `&` or a comment.
fn invocations(line: &str) -> Vec<Vec<String>> {
    let line = line.split(" #").next().unwrap_or("");
    let mut found = Vec::new();
    for part in line.split(['|', ';']).flat_map(|p| p.split("&&")) {
        let part = part.trim().trim_end_matches('&').trim();
        let words = shell_words(part);
        let start = words
            .iter()
            .position(|w| w == "vivachat" || w.ends_with("/vivachat") || w == "$V");
        let start = match start {
            Some(i) => Some(i + 1),
            None => words
                .windows(4)
                .position(|w| w == ["cargo", "run", "--release", "--"])
                .map(|i| i + 4),
        };
        if let Some(i) = start {
            // "[flags]" and the like are placeholders in prose, not arguments.
            let args: Vec<String> = words[i..]
                .iter()
                .filter(|w| !w.starts_with('['))
                .cloned()
                .collect();
            if args
                .first()
                .is_some_and(|a| a.starts_with(|c: char| c.is_ascii_lowercase()))
            {
                found.push(args);
            }
        }
    }
    found
}

fn documents() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_vivachat_command_in_the_docs_parses() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut in_shell = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_shell = line.trim_start() == "```sh";
                continue;
            }
            // Shell blocks, and inline `vivachat ...` spans in prose and tables.
            let candidates: Vec<String> = if in_shell {
                vec![line.to_string()]
            } else {
                line.split('`')
                    .skip(1)
                    .step_by(2)
                    .filter(|span| {
                        span.starts_with("vivachat ") || span.starts_with("cargo run --release -- ")
                    })
                    .filter(|span| !span.contains("..."))
                    .map(str::to_string)
                    .collect()
            };
            for candidate in candidates {
                for args in invocations(&candidate) {
                    checked += 1;
                    let argv = std::iter::once("vivachat".to_string()).chain(args.iter().cloned());
                    let result = Cli::try_parse_from(argv);
                    let fine = match &result {
                        Ok(_) => true,
                        Err(e) => {
                            use clap::error::ErrorKind::*;
                            matches!(e.kind(), DisplayHelp | DisplayVersion)
                                // `vivachat client` named in prose: the subcommand must exist.
                                || (args.len() == 1
                                    && Cli::command().find_subcommand(&args[0]).is_some())
                        }
                    };
                    if let (false, Err(e)) = (fine, result) {
                        failures.push(format!(
                            "{}:{}: `vivachat {}`: {}",
                            file.display(),
                            n + 1,
                            args.join(" "),
                            e.to_string().lines().next().unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "commands in the docs that do not parse:\n{}",
        failures.join("\n")
    );
    assert!(
        checked >= 30,
        "only {checked} commands found: is the extraction still working?"
    );
}

#[test]
fn the_extraction_itself() {
    assert_eq!(
        invocations(
            r#"printf '/join g1\n' | vivachat client carol --url "ws://h:1"   # a comment"#
        ),
        vec![vec![
            "client".to_string(),
            "carol".into(),
            "--url".into(),
            "ws://h:1".into()
        ]]
    );
    assert_eq!(invocations("cargo run --release -- serve").len(), 1);
    assert_eq!(
        invocations("taskset -c 0 target/release/vivachat serve --quiet &")[0],
        ["serve", "--quiet"]
    );
    assert!(invocations("cargo build --release").is_empty());
    assert_eq!(
        shell_words(r#"--send bob "hello there""#),
        ["--send", "bob", "hello there"]
    );
}
