//! Odd store contents, as a hand, a crash or another tool leaves them: every one is
//! reported with its path or refused with a typed error, never sliced into a panic.

use std::path::Path;

use picie_engine::store::{Lookup, Store, StoreError};

/// A folder store holding: a stray file and a stray short folder under objects/, an
/// artifact folder named `a` (too short for a key), one with a non-ASCII name, one with
/// a truncated manifest and one whose manifest names another key.
fn odd_store(dir: &Path) -> (Store, String) {
    let store = Store::open(&dir.join("store")).unwrap();
    let objects = store.root().join("objects");
    std::fs::write(objects.join("x"), b"stray").unwrap();
    std::fs::create_dir_all(objects.join("y").join("z")).unwrap();
    for (folder, key) in [("ab/a", "a"), ("ab/abé", "abé")] {
        let d = objects.join(folder);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("manifest.json"), format!(r#"{{"key": "{key}"}}"#)).unwrap();
    }
    let cut = "cd".to_string() + &"0".repeat(62);
    let d = objects.join("cd").join(&cut);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("manifest.json"), format!(r#"{{"key": "{cut}", "no"#)).unwrap();
    let other = "ef".to_string() + &"0".repeat(62);
    let d = objects.join("ef").join(&other);
    std::fs::create_dir_all(&d).unwrap();
    let m = crate::common::manifest("ab");
    std::fs::write(d.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    (store, cut)
}

#[test]
fn a_folder_store_lists_odd_contents_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = odd_store(dir.path());
    let listed = store.list().unwrap();
    let why: Vec<(String, String)> = listed
        .iter()
        .map(|l| match l {
            Ok(a) => panic!("listed as an artifact: {}", a.dir.display()),
            Err((p, why)) => (p.display().to_string(), why.clone()),
        })
        .collect();
    let has = |tail: &str, reason: &str| {
        assert!(
            why.iter()
                .any(|(p, w)| p.ends_with(tail) && w.contains(reason)),
            "{tail}: {why:?}"
        )
    };
    has("objects/x", "stray file");
    has("objects/y/z", "not an artifact folder");
    has("objects/ab/a", "not an artifact folder");
    has("objects/ab/abé", "not an artifact folder");
    has(
        &("objects/cd/cd".to_string() + &"0".repeat(62)),
        "manifest.json: ",
    );
    has(
        &("objects/ef/ef".to_string() + &"0".repeat(62)),
        "names key `ab`",
    );
}

#[test]
fn keys_that_cannot_name_an_artifact_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cut) = odd_store(dir.path());
    for key in ["a", "aé", "é", "", "../x", "ab/cd"] {
        match store.try_lookup(key) {
            Err(StoreError::BadKey { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key:?}: {other:?}"),
        }
        assert!(matches!(store.lookup(key), Lookup::Corrupt(_)), "{key:?}");
        assert!(
            matches!(store.remove(key), Err(StoreError::BadKey { .. })),
            "{key:?}"
        );
    }
    // Found by prefix: stray names are never keys; a truncated manifest is corrupt.
    for prefix in ["a", "é", "aé", "x", "z"] {
        match store.find(prefix) {
            Err(StoreError::NotFound { .. }) => {}
            other => panic!("{prefix:?}: {other:?}"),
        }
    }
    match store.find("cd") {
        Err(StoreError::Bad { path, message }) => {
            assert!(path.ends_with(&cut), "{}", path.display());
            assert!(message.contains("corrupt artifact"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gc_clears_odd_contents_from_a_folder_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = odd_store(dir.path());
    let lock = store.lock("gc").unwrap();
    let dry = store.gc(&lock, true).unwrap();
    assert_eq!(dry.removed, 6, "{dry:?}");
    let r = store.gc(&lock, false).unwrap();
    assert_eq!(r.removed, 6, "{r:?}");
    assert!(store.list().unwrap().is_empty());
}
