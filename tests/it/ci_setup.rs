//! `.ci/setup` takes bookworm-backports from the Debian mirror the machine is already configured
//! with (a corporate mirror, a snapshot), never from a mirror host named in the repository.

use std::path::Path;
use std::process::Command;

fn backports_source(apt_etc: &Path) -> (bool, String, String) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/setup"))
        .arg("--print-backports-source")
        .env("APT_ETC", apt_etc)
        .output()
        .expect("run .ci/setup");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn apt_etc(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sources.list.d")).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}

#[test]
fn backports_come_from_the_configured_deb822_mirror() {
    let dir = apt_etc(&[
        (
            "sources.list.d/debian.sources",
            "Types: deb\n\
             URIs: http://mirror.corp.example/debian-security\n\
             Suites: bookworm-security\n\
             Components: main\n\
             \n\
             Types: deb-src\n\
             URIs: http://src.corp.example/debian\n\
             Suites: bookworm\n\
             Components: main\n\
             \n\
             Types: deb\n\
             Enabled: no\n\
             URIs: http://old.corp.example/debian\n\
             Suites: bookworm\n\
             Components: main\n\
             \n\
             Types: deb\n\
             # a comment inside the stanza\n\
             URIs: http://mirror.corp.example/debian http://second.corp.example/debian\n\
             Suites: bookworm bookworm-updates\n\
             Components: main contrib\n\
             Signed-By: /etc/apt/keyrings/corp.gpg\n",
        ),
        (
            "sources.list",
            "deb http://should-not-win.example/debian bookworm main\n",
        ),
    ]);
    let (ok, out, err) = backports_source(dir.path());
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "Types: deb\nURIs: http://mirror.corp.example/debian\nSuites: bookworm-backports\n\
         Components: main\nSigned-By: /etc/apt/keyrings/corp.gpg\n"
    );
}

#[test]
fn backports_come_from_a_one_line_sources_list() {
    let dir = apt_etc(&[(
        "sources.list",
        "# deb http://commented.example/debian bookworm main\n\
         deb-src http://src.example/debian bookworm main\n\
         deb [arch=amd64] http://apt.corp.example:3142/debian bookworm main\n",
    )]);
    let (ok, out, err) = backports_source(dir.path());
    assert!(ok, "{err}");
    assert!(
        out.starts_with("Types: deb\nURIs: http://apt.corp.example:3142/debian\n"),
        "{out}"
    );
    assert!(out.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
}

#[test]
fn no_bookworm_source_is_an_error_not_a_guess() {
    let dir = apt_etc(&[(
        "sources.list",
        "deb http://mirror.example/debian trixie main\n",
    )]);
    let (ok, out, err) = backports_source(dir.path());
    assert!(!ok, "a guess was printed: {out}");
    assert!(out.is_empty());
    assert!(err.contains("cannot tell which Debian mirror"), "{err}");
}
