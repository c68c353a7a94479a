//! The documentation against the tree: every Rust block of README.md and docs/ is part of an
//! `examples/` target (so `--all-targets` compiles it), every `picie` command README.md shows
//! parses (its subcommand and flags exist, its pipeline file plans), every `make` target it
//! names exists, and every relative link points at a file.

use std::path::{Path, PathBuf};

use crate::cli::{picie, text};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The fenced blocks of `lang` in a Markdown text.
fn blocks(md: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match &mut current {
            None if line.trim_start() == format!("```{lang}") => current = Some(String::new()),
            Some(b) if line.trim_start() == "```" => {
                out.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_rust_block_is_part_of_an_example_target() {
    let mut examples = String::new();
    for e in std::fs::read_dir(root().join("examples")).unwrap() {
        examples.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    let mut seen = 0;
    for page in pages() {
        for b in blocks(&std::fs::read_to_string(&page).unwrap(), "rust") {
            seen += 1;
            assert!(
                examples.contains(&b),
                "{}: this Rust block is not in any examples/*.rs file, so CI does not \
                 compile it:\n{b}",
                page.display()
            );
        }
    }
    assert!(seen >= 3, "only {seen} Rust blocks found");
}

/// `picie SUB [SUB2] ARGS...` as README shows it: the words before the first argument.
fn subcommand(words: &[&str]) -> Vec<String> {
    let mut sub = vec![words[0].to_string()];
    if words[0] == "weights" {
        sub.push(words[1].to_string());
    }
    sub
}

#[test]
fn every_picie_command_in_the_readme_parses_and_plans() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut checked = 0;
    for block in blocks(&readme, "sh") {
        for line in block.lines() {
            let cmd = line.split('#').next().unwrap().trim();
            let Some(rest) = cmd.strip_prefix("picie ") else {
                if let Some(target) = cmd.strip_prefix("make ") {
                    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
                    assert!(
                        makefile
                            .lines()
                            .any(|l| l.starts_with(&format!("{target}:"))),
                        "README shows `make {target}`, which the Makefile lacks"
                    );
                }
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            let sub = subcommand(&words);
            let mut help_args: Vec<&str> = sub.iter().map(String::as_str).collect();
            help_args.push("--help");
            let help = picie(root(), &help_args);
            assert!(help.status.success(), "`{cmd}`: {}", text(&help));
            let help = text(&help);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                assert!(help.contains(flag), "`{cmd}`: {flag} is not in:\n{help}");
            }
            for file in words.iter().filter(|w| w.ends_with(".yaml")) {
                let plan = picie(root(), &["plan", file]);
                assert!(
                    plan.status.success(),
                    "`picie plan {file}`: {}",
                    text(&plan)
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} picie commands found in README.md"
    );
}

#[test]
fn relative_links_point_at_files() {
    for page in pages() {
        let md = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for (i, _) in md.match_indices("](") {
            let target = &md[i + 2..];
            let target = &target[..target.find(')').unwrap()];
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            assert!(
                dir.join(file).exists(),
                "{}: link to {target}, which does not exist",
                page.display()
            );
        }
    }
}
