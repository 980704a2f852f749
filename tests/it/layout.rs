//! The crate's layout, checked against CONTRIBUTING.md: every module of `src/` sits in
//! one layer of the table there, imports only from its own layer or the ones below, no
//! modules import each other in a circle, and the import graph written there is the one
//! the sources have. (The parse is the one `modcycles.py` uses: `crate::` and `super::`
//! paths outside comments and `#[cfg(test)]` modules.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib".to_owned()
    } else {
        module.join("::")
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every module of `src/`, by path, with its file.
fn modules() -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<Module, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.file_name().is_some_and(|f| f == "tests.rs") {
                // A module's unit tests in a file of their own (`#[cfg(test)] mod
                // tests;`): not part of the library's layering.
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut parts: Module = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    let src = root().join("src");
    let mut out = BTreeMap::new();
    walk(&src, &src, &mut out);
    out
}

/// The source without `//` comments and `#[cfg(test)] mod ... { }` blocks.
fn code_of(source: &str) -> String {
    let is_ident = |text: &str| text.chars().all(|c| c.is_alphanumeric() || c == '_');
    let mut kept = String::new();
    let mut rest = source;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after_attr = at + "#[cfg(test)]".len();
        let tail = &rest[after_attr..];
        let module = tail
            .trim_start()
            .strip_prefix("mod ")
            .and_then(|m| m.find('{').map(|open| (m, open)))
            .filter(|(m, open)| is_ident(m[..*open].trim()));
        let Some((module, open)) = module else {
            kept.push_str(&rest[..after_attr]);
            rest = tail;
            continue;
        };
        kept.push_str(&rest[..at]);
        // `module` is a suffix of `rest`: where its `{` is in `rest`.
        let body = &rest[rest.len() - module.len() + open + 1..];
        let mut depth = 1;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &body[end..];
    }
    kept.push_str(rest);
    kept.lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after each occurrence of `prefix` (`crate`, `super`): `a::b::C`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(found) = code[from..].find(prefix) {
        let at = from + found;
        from = at + prefix.len();
        let word_start =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if !word_start {
            continue;
        }
        let mut rest = &code[from..];
        if rest.starts_with("::{") {
            // use crate::{a, b::c}: every item of the group.
            let close = rest.find('}').unwrap_or(rest.len());
            for item in rest[3..close].split(',') {
                let item: Vec<String> = item
                    .trim()
                    .split("::")
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'))
                    .collect();
                if !item.is_empty() {
                    out.push(item);
                }
            }
            continue;
        }
        let mut path = Vec::new();
        while let Some(next) = rest.strip_prefix("::") {
            let len = next
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(next.len());
            if len == 0 {
                break;
            }
            path.push(next[..len].to_owned());
            rest = &next[len..];
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

/// Who imports whom, module by module.
fn imports(modules: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let resolve = |mut path: Module| {
        while !path.is_empty() && !modules.contains_key(&path) {
            path.pop();
        }
        path
    };
    let mut edges = BTreeMap::new();
    for (module, file) in modules {
        let code = code_of(&std::fs::read_to_string(file).expect("read module"));
        let is_dir_module = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        let mut here = module.clone();
        if !is_dir_module {
            here.pop();
        }
        let mut targets = BTreeSet::new();
        for path in paths_after(&code, "crate") {
            targets.insert(resolve(path));
        }
        for path in paths_after(&code, "super") {
            if here.is_empty() {
                continue;
            }
            let mut full = here[..here.len() - 1].to_vec();
            full.extend(path);
            let target = resolve(full);
            if !target.starts_with(module) {
                targets.insert(target);
            }
        }
        targets.retain(|t| t != module && !t.is_empty());
        edges.insert(module.clone(), targets);
    }
    edges
}

/// CONTRIBUTING.md's layer table: module name -> (rank, layer name); the first row is
/// the top.
fn layers() -> BTreeMap<String, (usize, String)> {
    let text = std::fs::read_to_string(root().join("CONTRIBUTING.md")).expect("CONTRIBUTING.md");
    let table = text
        .split("<!-- layers -->")
        .nth(1)
        .expect("CONTRIBUTING.md has a <!-- layers --> table");
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect();
    let count = rows.len();
    let mut out = BTreeMap::new();
    for (index, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (layer, listed) = (cells[1], cells[2]);
        for module in listed.split(',') {
            let module = module.trim().trim_matches('`').to_owned();
            let previous = out.insert(module.clone(), (count - index, layer.to_owned()));
            assert!(previous.is_none(), "{module} is listed twice");
        }
    }
    out
}

#[test]
fn every_module_is_in_one_layer_and_imports_only_downward() {
    let modules = modules();
    let layers = layers();
    let listed: BTreeSet<String> = layers.keys().cloned().collect();
    let present: BTreeSet<String> = modules
        .keys()
        .filter(|m| !m.is_empty())
        .map(|m| name(m))
        .collect();
    assert_eq!(
        present.difference(&listed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "modules missing from CONTRIBUTING.md's layer table"
    );
    assert_eq!(
        listed.difference(&present).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "CONTRIBUTING.md lists modules that do not exist"
    );
    let mut upward = Vec::new();
    for (from, targets) in imports(&modules) {
        if from.is_empty() {
            continue; // lib.rs re-exports from every layer
        }
        let (rank, layer) = &layers[&name(&from)];
        for to in targets {
            let (to_rank, to_layer) = &layers[&name(&to)];
            if to_rank > rank {
                upward.push(format!(
                    "{} ({layer}) imports {} ({to_layer})",
                    name(&from),
                    name(&to)
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let edges = imports(&modules());
    // Depth-first search for a back edge.
    fn visit(
        node: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, bool>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match state.get(node) {
            Some(true) => return None,
            Some(false) => {
                let start = stack.iter().position(|m| m == node).unwrap_or(0);
                return Some(stack[start..].to_vec());
            }
            None => {}
        }
        state.insert(node.clone(), false);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(node.clone(), true);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, &edges, &mut state, &mut stack) {
            let names: Vec<String> = cycle.iter().map(|m| name(m)).collect();
            panic!(
                "modules that import each other in a circle: {}",
                names.join(" -> ")
            );
        }
    }
}

/// The graph between top-level modules, one line each: `a -> b, c`.
fn top_level_graph() -> String {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in imports(&modules()) {
        let Some(top) = from.first() else { continue };
        let entry = graph.entry(top.clone()).or_default();
        for to in targets {
            if let Some(to_top) = to.first()
                && to_top != top
            {
                entry.insert(to_top.clone());
            }
        }
    }
    graph
        .iter()
        .map(|(from, to)| {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            if to.is_empty() {
                from.clone()
            } else {
                format!("{from} -> {}", to.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn contributing_shows_the_import_graph_the_sources_have() {
    let text = std::fs::read_to_string(root().join("CONTRIBUTING.md")).expect("CONTRIBUTING.md");
    let written = text
        .split("<!-- graph -->")
        .nth(1)
        .and_then(|rest| rest.split("```text\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("CONTRIBUTING.md has a <!-- graph --> ```text block");
    let actual = top_level_graph();
    assert_eq!(
        written.trim_end(),
        actual,
        "CONTRIBUTING.md's import graph is out of date; the sources have:\n{actual}"
    );
}

#[test]
fn no_classification_reads_a_server_message() {
    // The server's message is translated by its lc_messages; only SQLSTATEs and the
    // driver's error types may decide anything. `.message()` of a DbError is its text.
    let mut readers = Vec::new();
    for (module, file) in modules() {
        let code = code_of(&std::fs::read_to_string(&file).expect("read module"));
        if code.contains(".message()") || code.contains(".detail()") || code.contains(".hint()") {
            readers.push(name(&module));
        }
    }
    assert!(
        readers.is_empty(),
        "modules that read a server message's text: {readers:?}"
    );
}
