//! Failpoints at crash-critical lines, compiled out of release builds.
//!
//! In debug builds (every test build) `failpoint!("name")` looks the name up in a table that
//! is filled from the `CAPSTAN_FAILPOINTS` environment variable at first use
//! (`name=action;name=action`) or by [`set`] / [`clear`] at run time. Actions:
//! - `abort`: `std::process::abort()`, a crash at exactly that line; `abort@N`: the same at
//!   the Nth time the line is reached;
//! - `enospc` / `eio`: the failpoint returns that I/O error to its caller;
//! - `panic`: the thread that reaches it panics (a bug in the code after it, as it were);
//! - `off`: nothing.
//!
//! In release builds the macro expands to nothing, so benchmarks measure the real code. We use
//! our own rather than the `fail` crate because that crate is switched by a cargo feature that
//! would have to be threaded through every crate of the workspace to stay out of release
//! builds, while `debug_assertions` does that by itself.

#[cfg(debug_assertions)]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    fn table() -> &'static Mutex<HashMap<String, String>> {
        static T: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
        T.get_or_init(|| {
            let mut m = HashMap::new();
            if let Ok(spec) = std::env::var("CAPSTAN_FAILPOINTS") {
                for part in spec.split(';').filter(|p| !p.is_empty()) {
                    if let Some((k, v)) = part.split_once('=') {
                        m.insert(k.trim().to_string(), v.trim().to_string());
                    }
                }
            }
            Mutex::new(m)
        })
    }

    pub fn set(name: &str, action: &str) {
        table().lock().unwrap().insert(name.to_string(), action.to_string());
    }

    pub fn clear(name: &str) {
        table().lock().unwrap().remove(name);
    }

    /// Whether `name` has an action (other than `off`): code that must be shaped differently
    /// for a failpoint to sit where it says asks this.
    pub fn armed(name: &str) -> bool {
        table().lock().unwrap().get(name).is_some_and(|a| a != "off")
    }

    /// Evaluates failpoint `name`: aborts, or returns the error to inject.
    pub fn eval(name: &str) -> Option<std::io::Error> {
        let mut t = table().lock().unwrap();
        let action = t.get(name).cloned()?;
        if let Some(n) = action.strip_prefix("abort@") {
            let left: u64 = n.parse().unwrap_or(1);
            if left <= 1 {
                eprintln!("failpoint {name}: abort");
                std::process::abort()
            }
            t.insert(name.to_string(), format!("abort@{}", left - 1));
            return None;
        }
        drop(t);
        match action.as_str() {
            "abort" => {
                eprintln!("failpoint {name}: abort");
                std::process::abort()
            }
            "enospc" => Some(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            "eio" => Some(std::io::Error::from_raw_os_error(libc::EIO)),
            "panic" => panic!("failpoint {name}: panic"),
            _ => None,
        }
    }
}

#[cfg(debug_assertions)]
pub use imp::{armed, clear, eval, set};

/// Release builds: failpoints do not exist.
#[cfg(not(debug_assertions))]
pub fn set(_name: &str, _action: &str) {}
#[cfg(not(debug_assertions))]
pub fn clear(_name: &str) {}
#[cfg(not(debug_assertions))]
pub fn armed(_name: &str) -> bool {
    false
}

/// `failpoint!("name")` may abort the process; `failpoint!("name", |e| ...)` also lets the
/// caller return an injected I/O error.
#[macro_export]
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(debug_assertions)]
        {
            let _ = $crate::failpoint::eval($name);
        }
    };
    ($name:expr, $on_err:expr) => {
        #[cfg(debug_assertions)]
        {
            if let Some(e) = $crate::failpoint::eval($name) {
                #[allow(clippy::redundant_closure_call)]
                return ($on_err)(e);
            }
        }
    };
}
