//! The module import graph of the workspace's crates has no cycle.
//!
//! Run it with `cargo test -p locus-loadtest --test import_graph`. For each crate in
//! [`CRATES`] it reads every `src/**/*.rs` but the binary's `main.rs`, maps each file to
//! its top-level module (`src/store/sqlite.rs` is `store`, `src/lib.rs` the crate root),
//! and collects every `crate::module` path outside comments and string literals: in `use`
//! lines, brace groups (`use crate::{a, b::c}`) and inline paths (`crate::a::f()`) alike.
//! A path to an item of the root (`crate::now_ms`) is an edge to the root; `super::` is
//! not counted (it stays inside a module's own tree). It fails printing every cycle it
//! finds, e.g. `edge: server -> link -> server`.
//!
//! Adding a crate is one line in [`CRATES`]: its folder, how many modules it has (exact,
//! so a misread folder cannot pass) and the fewest edges expected (so a reader that
//! misses paths cannot pass). Put a crate there once it is acyclic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `(crate folder, modules including the root, at least this many edges)`.
const CRATES: &[(&str, usize, usize)] =
    &[("edge", 13, 28), ("loadtest", 11, 16), ("locator", 26, 75)];

/// The node of files that are the crate root.
const ROOT: &str = "(root)";

#[test]
fn no_import_cycle_in_the_listed_crates() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the loadtest crate sits in the workspace");
    let mut problems = Vec::new();
    for &(name, modules, min_edges) in CRATES {
        let files = read_sources(&workspace.join(name).join("src"));
        let graph = Graph::from_sources(&files);
        let edges = graph.edge_count();
        if graph.modules.len() != modules {
            problems.push(format!(
                "{name}: {} modules found ({:?}), {modules} expected: update CRATES after adding or removing a module",
                graph.modules.len(),
                graph.modules
            ));
        }
        if edges < min_edges {
            problems.push(format!(
                "{name}: only {edges} imports between modules found, at least {min_edges} expected: the reader misses paths"
            ));
        }
        for cycle in graph.cycles() {
            problems.push(format!("{name}: import cycle {}", cycle.join(" -> ")));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `(path relative to src, text)` of every source file of the library.
fn read_sources(src: &Path) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, src: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src).expect("under src").to_path_buf();
                if relative == Path::new("main.rs") || relative.starts_with("bin") {
                    continue; // binaries use the library by its name: they cannot close a cycle
                }
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((relative, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(src, src, &mut out);
    assert!(!out.is_empty(), "{}: no source file", src.display());
    out
}

/// The top-level module a file belongs to.
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    match first.strip_suffix(".rs") {
        Some("lib") => ROOT.to_string(),
        Some(stem) => stem.to_string(),
        None => first,
    }
}

#[derive(Debug, Default)]
struct Graph {
    modules: BTreeSet<String>,
    imports: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn from_sources(files: &[(PathBuf, String)]) -> Graph {
        let mut graph = Graph::default();
        for (path, _) in files {
            graph.modules.insert(module_of(path));
        }
        for (path, text) in files {
            let from = module_of(path);
            for first in crate_paths(&strip_comments_and_strings(text)) {
                let to = if graph.modules.contains(&first) && first != ROOT {
                    first
                } else {
                    ROOT.to_string()
                };
                if to != from {
                    graph.imports.entry(from.clone()).or_default().insert(to);
                }
            }
        }
        graph
    }

    fn edge_count(&self) -> usize {
        self.imports.values().map(BTreeSet::len).sum()
    }

    /// One cycle per strongly connected component of more than one module, as a path
    /// that returns to its start.
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut cycles = Vec::new();
        let mut reported: BTreeSet<String> = BTreeSet::new();
        for start in &self.modules {
            if reported.contains(start) {
                continue;
            }
            if let Some(mut path) = self.path(start, start) {
                reported.extend(path.iter().cloned());
                path.insert(0, start.clone());
                cycles.push(path);
            }
        }
        cycles
    }

    /// The shortest import path from `from` to `to` (without `from`), breadth first.
    fn path(&self, from: &str, to: &str) -> Option<Vec<String>> {
        let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(at) = queue.pop_front() {
            for next in self.imports.get(at).into_iter().flatten() {
                if next == to {
                    let mut path = vec![to.to_string()];
                    let mut back = at;
                    while back != from {
                        path.push(back.to_string());
                        back = previous[back];
                    }
                    path.reverse();
                    return Some(path);
                }
                if !previous.contains_key(next.as_str()) && next != from {
                    previous.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

/// The first segment after every `crate::` (each item of a `crate::{…}` group).
fn crate_paths(code: &str) -> Vec<String> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::").map(|i| i + from) {
        from = at + "crate::".len();
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            continue; // `my_crate::`, `$crate::`
        }
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group));
        } else if let Some(name) = identifier(rest) {
            found.push(name);
        }
    }
    found
}

/// The first identifier of each item of a brace group (the text after its `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && depth == 0 && !c.is_whitespace() => {
                item_start = false;
                if let Some(name) = identifier(&group[i..]) {
                    heads.push(name);
                }
            }
            _ => {}
        }
    }
    heads
}

fn identifier(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// The code without comments (line, doc and nested block comments) and without the
/// contents of string, raw string and character literals, so that a doc link or a
/// message mentioning `crate::x` is not an import.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !chars[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    _ => j += 1,
                }
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or a lifetime ('a) kept as is.
            let close = if next == Some('\\') {
                chars[i + 2..]
                    .iter()
                    .position(|&d| d == '\'')
                    .map(|p| i + 2 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn fixture(files: &[(&str, &str)]) -> Graph {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    Graph::from_sources(&files)
}

#[test]
fn a_cycle_through_an_inline_path_is_found_and_printed() {
    let graph = fixture(&[
        ("lib.rs", "pub mod server;\npub mod link;\npub mod state;\n"),
        (
            "server.rs",
            "use crate::{link::run, state::{State, View}};\n",
        ),
        ("link.rs", "use crate::state::State;\n"),
        (
            "state.rs",
            "pub struct State;\nfn f() { crate::link::helper(); }\n",
        ),
    ]);
    assert_eq!(graph.modules.len(), 4);
    assert_eq!(graph.edge_count(), 4, "{:?}", graph.imports);
    assert_eq!(graph.cycles(), vec![vec!["link", "state", "link"]]);
}

#[test]
fn comments_strings_and_other_crates_are_not_imports() {
    let graph = fixture(&[
        (
            "lib.rs",
            "pub mod a;\npub mod b;\npub fn now_ms() -> i64 { 0 }\n",
        ),
        (
            "a.rs",
            "//! See [`crate::b`].\n/* crate::b::x */\nconst S: &str = \"crate::b\";\nconst R: &str = r#\"crate::b\"#;\nconst C: char = '\"';\nfn f() { locus_edge::b::x(); $crate::b::y(); crate::now_ms(); }\n",
        ),
        ("b/mod.rs", "use crate::a::A;\n"),
        ("b/inner.rs", "use super::x;\n"),
    ]);
    assert_eq!(graph.modules.len(), 3);
    assert_eq!(
        graph.imports,
        BTreeMap::from([
            ("a".to_string(), BTreeSet::from([ROOT.to_string()])),
            ("b".to_string(), BTreeSet::from(["a".to_string()])),
        ])
    );
    assert!(graph.cycles().is_empty());
}
