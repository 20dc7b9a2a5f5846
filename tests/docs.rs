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

/// Every `vivachat ...` invocation quoted in one document, with its line
/// number: shell blocks, and inline spans in prose and tables.
fn quoted_commands(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut in_shell = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_shell = line.trim_start() == "```sh";
            continue;
        }
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
                found.push((n + 1, args));
            }
        }
    }
    found
}

#[test]
fn every_vivachat_command_in_the_docs_parses() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, args) in quoted_commands(&text) {
            checked += 1;
            let argv = std::iter::once("vivachat".to_string()).chain(args.iter().cloned());
            let result = Cli::try_parse_from(argv);
            let fine = match &result {
                Ok(_) => true,
                Err(e) => {
                    use clap::error::ErrorKind::*;
                    matches!(e.kind(), DisplayHelp | DisplayVersion)
                        // `vivachat client` named in prose: the subcommand must exist.
                        || (args.len() == 1 && Cli::command().find_subcommand(&args[0]).is_some())
                }
            };
            if let (false, Err(e)) = (fine, result) {
                failures.push(format!(
                    "{}:{line}: `vivachat {}`: {}",
                    file.display(),
                    args.join(" "),
                    e.to_string().lines().next().unwrap_or("")
                ));
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

/// The subcommand path of an invocation: `bench load --clients 2` is
/// `bench load`.
fn subcommand_path(args: &[String]) -> Vec<String> {
    let mut command = Cli::command();
    let mut path = Vec::new();
    for arg in args {
        match command.find_subcommand(arg) {
            Some(sub) => {
                path.push(arg.clone());
                command = sub.clone();
            }
            None => break,
        }
    }
    path
}

/// The guide is read aloud in a viva, so every command it quotes must run
/// with the binary as built: each subcommand's `--help` exits 0 and prints
/// its usage.
#[test]
fn every_command_the_viva_guide_quotes_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/viva.md")).unwrap();
    let mut paths: Vec<Vec<String>> = quoted_commands(&text)
        .into_iter()
        .map(|(_, args)| subcommand_path(&args))
        .filter(|p| !p.is_empty())
        .collect();
    paths.sort();
    paths.dedup();
    assert!(paths.len() >= 5, "{paths:?}");
    for path in &paths {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vivachat"))
            .args(path)
            .arg("--help")
            .output()
            .unwrap();
        let usage = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "vivachat {} --help: {:?}",
            path.join(" "),
            out
        );
        assert!(
            usage.contains("Usage: vivachat") && usage.contains(path.last().unwrap().as_str()),
            "vivachat {} --help:\n{usage}",
            path.join(" ")
        );
    }
}

/// Every function defined in the crate's sources and tests, by name.
fn defined_functions() -> std::collections::HashSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = std::collections::HashSet::new();
    let mut dirs = vec![root.join("src"), root.join("tests")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for rest in text.split("fn ").skip(1) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// A test named in the docs as evidence must exist: `a_name_like_this`
/// (four or more underscores, in backticks) is a test, or a prefix of one as
/// `cargo test` takes it, and `cargo test --test FILE NAME` names a file of
/// tests/ that holds it.
#[test]
fn every_test_the_docs_cite_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let defined = defined_functions();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for span in line.split('`').skip(1).step_by(2) {
                let words: Vec<&str> = span.split_whitespace().collect();
                if let ["cargo", "test", "--test", suite, rest @ ..] = words.as_slice() {
                    let source = root.join("tests").join(format!("{suite}.rs"));
                    match std::fs::read_to_string(&source) {
                        Err(_) => failures.push(format!(
                            "{}:{}: no tests/{suite}.rs",
                            file.display(),
                            n + 1
                        )),
                        Ok(body) => {
                            if let Some(name) = rest.first().filter(|w| !w.starts_with('-')) {
                                checked += 1;
                                if !body.contains(&format!("fn {name}")) {
                                    failures.push(format!(
                                        "{}:{}: tests/{suite}.rs has no test {name}",
                                        file.display(),
                                        n + 1
                                    ));
                                }
                            }
                        }
                    }
                    continue;
                }
                let is_test_name = span.matches('_').count() >= 4
                    && span
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if is_test_name {
                    checked += 1;
                    if !defined.iter().any(|f| f.starts_with(span)) {
                        failures.push(format!(
                            "{}:{}: no function named {span}",
                            file.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "tests the docs cite that do not exist:\n{}",
        failures.join("\n")
    );
    assert!(
        checked >= 40,
        "only {checked} citations found: is the extraction still working?"
    );
}

/// The delivery-guarantees table, between its marker and the first line
/// that is not a table row.
fn delivery_table(text: &str) -> Vec<&str> {
    let start = text
        .lines()
        .position(|l| l.contains("<!-- delivery-table"))
        .expect("the delivery table's marker");
    text.lines()
        .skip(start + 1)
        .take_while(|l| l.starts_with('|'))
        .collect()
}

/// The guide and the contract give one table, so they cannot disagree; every
/// cell says which test shows it, or that it is not guaranteed.
#[test]
fn the_delivery_table_is_one_table_and_every_cell_cites_a_test_or_says_not_guaranteed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protocol = std::fs::read_to_string(root.join("docs/protocol.md")).unwrap();
    let viva = std::fs::read_to_string(root.join("docs/viva.md")).unwrap();
    let table = delivery_table(&protocol);
    assert_eq!(
        table,
        delivery_table(&viva),
        "docs/protocol.md and docs/viva.md differ"
    );
    let rows: Vec<&str> = table.iter().skip(2).copied().collect();
    assert_eq!(rows.len(), 6 * 3, "six hops, three failures each");
    for row in rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 5, "{row}");
        for cell in &cells[2..] {
            let cites = cell
                .split('`')
                .skip(1)
                .step_by(2)
                .any(|s| s.matches('_').count() >= 4);
            let refers = cell.starts_with("the same") || cell.starts_with("as the core's row");
            assert!(
                cites || refers || cell.contains("not guaranteed"),
                "a cell with neither a test nor \"not guaranteed\": {cell}"
            );
        }
    }
}

/// A figure with its unit, as the guide quotes them: "0.69x", "3.6 µs",
/// "150,000", "50 million".
fn figures(sentence: &str) -> Vec<String> {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let mut found = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let w = word.trim_matches(|c: char| "(),;:*".contains(c));
        let digits = w.chars().filter(|c| c.is_ascii_digit()).count();
        if digits == 0 || !w.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let next = words
            .get(i + 1)
            .map(|n| n.trim_matches(|c: char| "(),;:.*".contains(c)));
        let unit = next.filter(|n| {
            [
                "µs", "ms", "s", "KiB", "MiB", "million", "frames", "acks/s", "msgs/s",
            ]
            .contains(n)
        });
        if w.ends_with('x') || w.ends_with('%') || w.contains(',') {
            found.push(w.trim_end_matches('.').to_string());
        } else if let Some(unit) = unit {
            found.push(format!("{} {unit}", w.trim_end_matches('.')));
        }
    }
    found
}

/// A figure the guide says comes from docs/performance.md is there, so the
/// two cannot drift apart: every figure in a sentence of docs/viva.md that
/// cites docs/performance.md appears in docs/performance.md.
#[test]
fn every_figure_the_guide_quotes_from_performance_md_is_there() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let viva = std::fs::read_to_string(root.join("docs/viva.md")).unwrap();
    let performance = std::fs::read_to_string(root.join("docs/performance.md")).unwrap();
    let flat = |t: &str| {
        t.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('*', "")
    };
    let performance = flat(&performance);
    let mut checked = 0;
    let mut missing = Vec::new();
    for paragraph in viva.split("\n\n") {
        let paragraph = flat(paragraph);
        for sentence in paragraph.split(". ") {
            if !sentence.contains("performance.md") {
                continue;
            }
            for figure in figures(sentence) {
                checked += 1;
                if !performance.contains(&figure) {
                    missing.push(format!("{figure:?} in: {sentence}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "figures docs/viva.md quotes from docs/performance.md that are not there:\n{}",
        missing.join("\n")
    );
    assert!(
        checked >= 5,
        "only {checked} figures found: is the extraction still working?"
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
        figures("3.6 µs of node CPU, 0.69x of memory, 150,000 acks and 50 million frames (33 s)"),
        ["3.6 µs", "0.69x", "150,000", "50 million", "33 s"]
    );
    assert_eq!(
        shell_words(r#"--send bob "hello there""#),
        ["--send", "bob", "hello there"]
    );
}
