//! The checked-in C header must match the exported functions: same names, same parameter and
//! return types (Rust types mapped to C), and every declared function exported by the shared
//! library.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

/// name → (return type, parameter types), whitespace removed.
type Signatures = BTreeMap<String, (String, Vec<String>)>;

fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("*/").expect("closed comment");
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fn header_signatures(text: &str) -> Signatures {
    let text = strip_comments(text);
    let mut out = Signatures::new();
    for declaration in text.split(';') {
        let declaration = declaration.trim();
        let Some(open) = declaration.find("r3fs_").filter(|_| declaration.contains('(')) else {
            continue;
        };
        let paren = declaration.find('(').unwrap();
        if paren < open || declaration.starts_with("struct") && !declaration.contains('(') {
            continue;
        }
        let head = &declaration[..paren];
        let name_start =
            head.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        let name = head[name_start..].to_string();
        let ret = head[..name_start].trim();
        let ret = ret.rsplit('\n').next().unwrap_or(ret);
        let params = &declaration[paren + 1..declaration.rfind(')').unwrap()];
        let params = params
            .split(',')
            .map(|p| {
                let p = p.trim();
                let cut =
                    p.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
                squash(&p[..cut])
            })
            .collect();
        out.insert(name, (squash(ret), params));
    }
    out
}

fn c_type(rust: &str) -> String {
    let rust = rust.trim();
    if let Some(inner) = rust.strip_prefix("*mut ") {
        return format!("{}*", c_type(inner));
    }
    if let Some(inner) = rust.strip_prefix("*const ") {
        return format!("const{}*", c_type(inner));
    }
    match rust {
        "c_int" => "int".into(),
        "c_char" => "char".into(),
        "c_void" => "void".into(),
        "u8" => "uint8_t".into(),
        "u64" => "uint64_t".into(),
        "i64" => "int64_t".into(),
        "usize" => "size_t".into(),
        "bool" => "bool".into(),
        "" => "void".into(),
        other if other.starts_with("r3fs_") => format!("struct{other}"),
        other => panic!("no C mapping for Rust type {other:?}"),
    }
}

fn rust_signatures(text: &str) -> Signatures {
    let mut out = Signatures::new();
    let mut rest = text;
    while let Some(at) = rest.find("extern \"C\" fn ") {
        rest = &rest[at + "extern \"C\" fn ".len()..];
        let paren = rest.find('(').unwrap();
        let name = rest[..paren].trim().to_string();
        let close = rest.find(')').unwrap();
        let params = rest[paren + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| squash(&c_type(p.split_once(':').unwrap().1)))
            .collect();
        let body = rest.find('{').unwrap();
        let ret = rest[close + 1..body].trim().strip_prefix("->").unwrap_or("").trim();
        out.insert(name, (squash(&c_type(ret)), params));
    }
    out
}

#[test]
fn header_matches_the_exported_functions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header =
        header_signatures(&std::fs::read_to_string(dir.join("include/r3fs_usrbio.h")).unwrap());
    let rust = rust_signatures(&std::fs::read_to_string(dir.join("src/ffi.rs")).unwrap());
    assert!(rust.len() >= 11, "found only {rust:?}");
    assert_eq!(header, rust, "include/r3fs_usrbio.h drifted from src/ffi.rs");

    // Every declared function is exported by the shared library.
    let library = common::library_dir().join("libr3fs_usrbio.so");
    match std::process::Command::new("nm").arg("-D").arg("--defined-only").arg(&library).output() {
        Ok(output) if output.status.success() => {
            let symbols = String::from_utf8_lossy(&output.stdout);
            for name in header.keys() {
                assert!(
                    symbols.lines().any(|l| l.split_whitespace().last() == Some(name.as_str())),
                    "{name} is not exported by {}",
                    library.display()
                );
            }
        }
        _ => println!("skipping the export check: nm is not available"),
    }
}

#[test]
fn the_parsers_see_what_they_should() {
    let header = header_signatures(
        "/* x */ int r3fs_a(const struct r3fs_iov *iov, uint64_t n);\nvoid r3fs_b(void *p);",
    );
    assert_eq!(
        header["r3fs_a"],
        ("int".into(), vec!["conststructr3fs_iov*".into(), "uint64_t".into()])
    );
    assert_eq!(header["r3fs_b"], ("void".into(), vec!["void*".into()]));
    let rust = rust_signatures(
        "pub unsafe extern \"C\" fn r3fs_a(iov: *const r3fs_iov, n: u64) -> c_int {}\npub extern \"C\" fn r3fs_b(p: *mut c_void) {}",
    );
    assert_eq!(rust, header);
}
