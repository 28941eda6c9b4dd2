//! Architecture invariants that a test can check by reading the source.
//!
//! - The sans-IO core (everything but `src/runtime/`, `src/cli/` and `src/main.rs`) names
//!   no glommio, no clock, no OS randomness, no sockets and no files.
//! - Every source file opens with a `//!` line saying what it is for.
//! - Channels and queues take their capacity from `constants`, never a literal.
//! - Source files do not import each other in a circle (a module and its own submodules
//!   aside).

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), fs::read_to_string(&p).unwrap()))
        .collect()
}

fn is_shell(path: &Path) -> bool {
    let s = path.to_string_lossy().replace('\\', "/");
    s.contains("/src/runtime/") || s.contains("/src/cli/") || s.ends_with("/src/main.rs")
}

/// Code lines: comments stripped, so documentation may name what the code must not use.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let code = line.split("//").next().unwrap_or("");
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// What the sans-IO core must not name. Socket *addresses* are values and allowed (a
/// cluster spec holds them); sockets, name resolution, files, clocks and OS randomness are
/// not.
const FORBIDDEN: [&str; 15] = [
    "glommio",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "OsRng",
    "getrandom",
    "std::fs",
    "tokio",
    "std::thread::sleep",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "ToSocketAddrs",
    "to_socket_addrs",
    "File::",
];

/// `line: word` for each forbidden word used in code (not comments) of `text`.
fn forbidden_uses(text: &str) -> Vec<String> {
    code_lines(text)
        .flat_map(|(line, code)| {
            FORBIDDEN
                .iter()
                .filter(move |w| code.contains(*w))
                .map(move |w| format!("{line}: {w}"))
        })
        .collect()
}

#[test]
fn the_forbidden_word_check_sees_code_and_ignores_comments() {
    let text =
        "//! Never call Instant::now here.\nlet t = std::time::Instant::now(); // not allowed\n";
    assert_eq!(forbidden_uses(text), vec!["2: Instant::now".to_string()]);
}

#[test]
fn sans_io_core_names_no_runtime_clock_or_os_resource() {
    let mut found = Vec::new();
    for (path, text) in sources("src") {
        if !is_shell(&path) {
            found.extend(
                forbidden_uses(&text)
                    .into_iter()
                    .map(|use_| format!("{}:{use_}", path.display())),
            );
        }
    }
    assert!(
        found.is_empty(),
        "the sans-IO core must stay free of I/O and clocks:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let mut missing = Vec::new();
    for dir in ["src", "tests", "benches", "perf/src"] {
        for (path, text) in sources(dir) {
            if !text.trim_start().starts_with("//!") {
                missing.push(path.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a //! header:\n{}",
        missing.join("\n")
    );
}

#[test]
fn channel_capacities_come_from_the_constants_module() {
    let mut found = Vec::new();
    for (path, text) in sources("src") {
        for (line, code) in code_lines(&text) {
            for call in ["bounded(", "sync_channel(", "shared_channel::new_bounded("] {
                if let Some(at) = code.find(call) {
                    let arg = code[at + call.len()..].trim_start();
                    if arg.starts_with(|c: char| c.is_ascii_digit()) {
                        found.push(format!("{}:{line}: {}", path.display(), code.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "use a named bound from constants.rs:\n{}",
        found.join("\n")
    );
}

/// The module path a source file under `src/` defines (`src/a/b.rs` and `src/a/b/mod.rs`
/// are `a::b`; `lib.rs` and `main.rs` are the root).
fn module_of(path: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rel = path.strip_prefix(&src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// Every `crate::a::b::...` path named in code, resolved to the longest module that exists.
fn modules_named(text: &str, modules: &[String]) -> Vec<String> {
    let mut named = Vec::new();
    for (_, code) in code_lines(text) {
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let path: String = rest[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            for n in (1..=segments.len()).rev() {
                let candidate = segments[..n].join("::");
                if modules.contains(&candidate) {
                    named.push(candidate);
                    break;
                }
            }
            rest = &rest[at + "crate::".len()..];
        }
    }
    named
}

/// Whether `a` is `b` or one of its ancestors or descendants (a parent module and its
/// children may name each other: that is how a module is split into files).
fn related(a: &str, b: &str) -> bool {
    a == b || b.starts_with(&format!("{a}::")) || a.starts_with(&format!("{b}::"))
}

#[test]
fn source_files_import_each_other_without_circles() {
    let files = sources("src");
    let modules: Vec<String> = files.iter().map(|(p, _)| module_of(p)).collect();
    let mut edges: Graph = Default::default();
    for ((_, text), from) in files.iter().zip(&modules) {
        for to in modules_named(text, &modules) {
            if !related(from, &to) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    if let Some(circle) = find_circle(&edges) {
        panic!(
            "modules import each other in a circle: {}",
            circle.join(" -> ")
        );
    }
}

type Graph = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// A circle in `edges`, if there is one: a depth-first search for a back edge, the stack
/// at that point being the circle.
fn find_circle(edges: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        edges: &Graph,
        done: &mut std::collections::BTreeMap<String, bool>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match done.get(m) {
            Some(true) => return None,
            Some(false) => {
                let start = stack.iter().position(|s| s == m)?;
                let mut circle = stack[start..].to_vec();
                circle.push(m.to_owned());
                return Some(circle);
            }
            None => {}
        }
        done.insert(m.to_owned(), false);
        stack.push(m.to_owned());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, done, stack) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(m.to_owned(), true);
        None
    }
    let mut done = Default::default();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut done, &mut Vec::new()))
}

#[test]
fn the_circle_check_sees_a_circle() {
    let modules = vec!["a".to_string(), "b::c".to_string(), "b".to_string()];
    assert_eq!(
        modules_named(
            "use crate::b::c::Thing; // crate::a\nlet x = crate::a::f();",
            &modules
        ),
        vec!["b::c".to_string(), "a".to_string()]
    );
    assert!(related("b", "b::c") && !related("a", "b"));
    let edge = |a: &str, b: &str| (a.to_string(), [b.to_string()].into_iter().collect());
    let circle: Graph = [edge("x", "y"), edge("y", "z"), edge("z", "x")].into();
    assert_eq!(find_circle(&circle).map(|c| c.len()), Some(4));
    let line: Graph = [edge("x", "y"), edge("y", "z")].into();
    assert_eq!(find_circle(&line), None);
}
