//! Architecture invariants that a test can check by reading the source.
//!
//! - The sans-IO core (everything but `src/runtime/` and `src/main.rs`) names no glommio,
//!   no clock, no OS randomness, no sockets and no files.
//! - Every source file opens with a `//!` line saying what it is for.
//! - Channels and queues take their capacity from `constants`, never a literal.

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
    s.contains("/src/runtime/") || s.ends_with("/src/main.rs")
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
