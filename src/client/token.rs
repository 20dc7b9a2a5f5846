//! The client's name tokens: one random secret per (server, name), kept in the
//! user's config directory with owner-only permissions.
//!
//! The first connection that brings a token claims the name on that server;
//! after that only connections with the same token may use it. The client
//! creates the token on first use and sends it every time, so a student never
//! has to think about it; `--token` carries it to a second device.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// server base URL -> name -> token
type Store = BTreeMap<String, BTreeMap<String, String>>;

const FILE: &str = "tokens.json";

/// Where tokens live: `$XDG_CONFIG_HOME/vivachat`, else `~/.config/vivachat`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("vivachat"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("vivachat")),
        None => bail!(
            "cannot tell where to keep your name token: neither XDG_CONFIG_HOME nor HOME is set; \
             pass --token TOKEN"
        ),
    }
}

/// What [`token_for`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    /// Newly created or newly saved (the first connection will claim the name).
    pub saved_now: bool,
    pub path: PathBuf,
}

/// The token for `name` on `server`: `given` if there is one (and saved, so
/// the flag is needed only once per device), else the saved one, else a new
/// one, saved before it is ever sent.
pub fn token_for(
    dir: &Path,
    server: &str,
    name: &str,
    given: Option<&str>,
) -> anyhow::Result<Token> {
    let path = dir.join(FILE);
    // Two clients started at once (two terminals, or tests in parallel) must
    // not both read the file and then each write back only its own new token.
    create_private_dir(dir)?;
    let _lock = Lock::take(&dir.join("tokens.lock"))?;
    let mut store = load(&path)?;
    let saved = store.get(server).and_then(|names| names.get(name)).cloned();
    let (token, saved_now) = match (given, saved) {
        (Some(given), Some(saved)) if given == saved => (saved, false),
        (None, Some(saved)) => (saved, false),
        (given, _) => {
            let token = match given {
                Some(given) => given.to_string(),
                None => crate::tokens::generate()?,
            };
            store
                .entry(server.to_string())
                .or_default()
                .insert(name.to_string(), token.clone());
            save(&path, &store)?;
            (token, true)
        }
    };
    Ok(Token {
        token,
        saved_now,
        path,
    })
}

/// `client NAME --show-token`: the token saved for `name` on `url`, to pass
/// with `--token` on another device. Creates nothing: a name that never
/// connected from here has no token yet, and the error says how to get one.
pub fn show(url: &str, name: &crate::names::Name) -> anyhow::Result<String> {
    let dir = config_dir()?;
    let path = dir.join(FILE);
    let store = load(&path)?;
    match store.get(url).and_then(|names| names.get(name.as_str())) {
        Some(token) => Ok(token.clone()),
        None => bail!(
            "no token is saved for {name} on {url} in {}: connect once with \
             `vivachat client {name} --url {url}` and it is created (and the name claimed)",
            path.display()
        ),
    }
}

/// An exclusive advisory lock on a file, released when dropped (or when the
/// process dies, so a crash never leaves it held).
struct Lock(#[allow(dead_code)] fs::File);

impl Lock {
    fn take(path: &Path) -> anyhow::Result<Lock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock only acts on the descriptor, which `file` keeps open.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                anyhow::bail!(
                    "cannot lock {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(Lock(file))
    }
}

fn load(path: &Path) -> anyhow::Result<Store> {
    read_json(path).map_err(|e| {
        e.context(format!(
            "{} is not a token file this version can read; move it aside and \
             connect again (names it claimed will need their tokens: see --token)",
            path.display()
        ))
    })
}

/// A JSON file of the config directory, or the empty value if there is none yet.
pub(super) fn read_json<T: Default + serde::de::DeserializeOwned>(
    path: &Path,
) -> anyhow::Result<T> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(serde_json::from_str(&text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Runs `f` holding the config directory's lock (created private if missing).
pub(super) fn locked<R>(dir: &Path, f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<R> {
    create_private_dir(dir)?;
    let _lock = Lock::take(&dir.join("tokens.lock"))?;
    f()
}

/// Writes a temporary file with mode 0600 and renames it over the old one, so
/// a crash never leaves a half-written file and the tokens are never readable
/// by other users, not even for a moment.
pub(super) fn save<T: serde::Serialize>(path: &Path, store: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(store)?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    #[cfg(unix)]
    {
        // A leftover temporary file keeps its old mode: set it explicitly.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// The token to connect with, and whether it was saved just now: the first
/// connection with it will claim the name.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub token: String,
    /// Where a new token was saved (None: it was saved before).
    pub fresh: Option<PathBuf>,
}

/// The token for `name` on `url`. A new one is saved before it is ever sent
/// (a crash after the server claimed the name must not lose it); it is only
/// announced once the server has accepted it ([`announce`]), and taken back
/// if the server refused it or could not be reached ([`forget`]).
pub fn resolve(
    url: &str,
    name: &crate::names::Name,
    given: Option<&str>,
) -> anyhow::Result<Resolved> {
    let token = config_dir().and_then(|dir| token_for(&dir, url, name.as_str(), given));
    match (token, given) {
        (Ok(t), _) => Ok(Resolved {
            fresh: t.saved_now.then_some(t.path),
            token: t.token,
        }),
        // Nowhere to save a token, but one was given: use it as it is.
        (Err(_), Some(given)) => Ok(Resolved {
            token: given.to_string(),
            fresh: None,
        }),
        (Err(e), None) => Err(e),
    }
}

/// The server accepted a token saved just now: say where it is kept.
pub fn announce(url: &str, name: &crate::names::Name, path: &Path) {
    use colored::Colorize;
    let text = format!(
        "Your token for {name} on {url} is saved in {} (readable by you only). \
         The server ties the name to it: on another device, pass it with --token \
         (`vivachat client {name} --url {url} --show-token` prints it).",
        path.display()
    );
    let text = crate::terminal::wrap_lines(&text, crate::terminal::output_width());
    eprintln!("{}", text.dimmed());
}

/// The server refused a token saved just now, or was not reached: take it
/// back (if it is still the one saved), so no useless token stays behind.
pub fn forget(url: &str, name: &crate::names::Name, token: &str) {
    let Ok(dir) = config_dir() else { return };
    let Ok(_lock) = Lock::take(&dir.join("tokens.lock")) else {
        return;
    };
    let path = dir.join(FILE);
    let Ok(mut store) = load(&path) else { return };
    let Some(names) = store.get_mut(url) else {
        return;
    };
    if names.get(name.as_str()).map(String::as_str) == Some(token) {
        names.remove(name.as_str());
        if names.is_empty() {
            store.remove(url);
        }
        let _ = save(&path, &store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vivachat-token-{tag}-{}-{}",
            std::process::id(),
            crate::tokens::generate().unwrap()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn created_once_per_server_and_name_then_reused() {
        let dir = temp_dir("reuse").join("vivachat");
        let a = token_for(&dir, "ws://h:1", "bob", None).unwrap();
        assert!(a.saved_now);
        assert_eq!(a.token.len(), 32);
        assert!(a.token.bytes().all(|b| b.is_ascii_hexdigit()));
        let again = token_for(&dir, "ws://h:1", "bob", None).unwrap();
        assert_eq!(
            (again.token.as_str(), again.saved_now),
            (a.token.as_str(), false)
        );
        // Another name, or the same name on another server, has its own token.
        let other = token_for(&dir, "ws://h:1", "ann", None).unwrap();
        let elsewhere = token_for(&dir, "ws://h:2", "bob", None).unwrap();
        assert_ne!(other.token, a.token);
        assert_ne!(elsewhere.token, a.token);
        // --token wins, and is remembered from then on.
        let given = token_for(&dir, "ws://h:1", "bob", Some("typed")).unwrap();
        assert_eq!((given.token.as_str(), given.saved_now), ("typed", true));
        assert_eq!(
            token_for(&dir, "ws://h:1", "bob", None).unwrap().token,
            "typed"
        );
        let same = token_for(&dir, "ws://h:1", "bob", Some("typed")).unwrap();
        assert!(!same.saved_now);
        // On a second device, --token is saved the first time.
        let dir2 = temp_dir("device2").join("vivachat");
        let first = token_for(&dir2, "ws://h:1", "bob", Some(&a.token)).unwrap();
        assert!(first.saved_now);
        assert_eq!(
            token_for(&dir2, "ws://h:1", "bob", None).unwrap().token,
            a.token
        );
        let _ = fs::remove_dir_all(dir.parent().unwrap());
        let _ = fs::remove_dir_all(dir2.parent().unwrap());
    }

    #[test]
    fn concurrent_first_uses_keep_every_token() {
        let dir = temp_dir("race").join("vivachat");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    token_for(&dir, &format!("ws://h:{i}"), "bob", None)
                        .unwrap()
                        .token
                })
            })
            .collect();
        let tokens: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for (i, token) in tokens.iter().enumerate() {
            let again = token_for(&dir, &format!("ws://h:{i}"), "bob", None).unwrap();
            assert_eq!(
                &again.token, token,
                "server {i}'s token survived the others"
            );
        }
        let _ = fs::remove_dir_all(dir.parent().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn the_file_and_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("perm").join("vivachat");
        let t = token_for(&dir, "ws://h:1", "bob", None).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&t.path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let _ = fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn an_unreadable_file_is_a_clear_error_not_a_new_token() {
        let dir = temp_dir("bad").join("vivachat");
        create_private_dir(&dir).unwrap();
        fs::write(dir.join(FILE), "not json").unwrap();
        let err = token_for(&dir, "ws://h:1", "bob", None).unwrap_err();
        assert!(format!("{err:#}").contains("move it aside"), "{err:#}");
        assert_eq!(fs::read_to_string(dir.join(FILE)).unwrap(), "not json");
        let _ = fs::remove_dir_all(dir.parent().unwrap());
    }
}
