//! How the processes that run the control plane (`capstan`, and `loadgen`'s embedded mode)
//! tune their allocator, mimalloc: freed pages are kept 60 s before they go back to the OS
//! (mimalloc's default is 1 s). The API server's requests allocate and free whole pages of
//! short-lived JSON trees; returned after a second, those pages came back as fresh ones, each
//! zeroed by the kernel again (2 MiB at a time under transparent huge pages). In the density
//! run that was 60,000-74,000 page faults and 9 to 29 % of all CPU in the kernel's
//! `clear_page_erms` (the more, the slower this machine's memory that day). 10 s left
//! 11,000-35,000 faults; 60 s leaves 7,000-11,000, about what never returning anything
//! does, with the same peak RSS (bench/RESULTS.md). An idle process still gives its memory
//! back, a minute later. `MIMALLOC_PURGE_DELAY` in the environment, mimalloc's own setting,
//! is left to win.

/// `mi_option_purge_delay` of mimalloc.h (its place in the option enum in mimalloc v2 and v3
/// alike; the Rust binding names the options around it but not this one).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

pub const PURGE_DELAY_MS: i64 = 60_000;

/// Call first in `main`.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is a plain store into mimalloc's option table; options
        // may be changed at any time (each purge reads the current value).
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS as _) }
    }
}

/// The purge delay in force, in milliseconds.
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_set_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // an operator's setting: not this test's to check
        }
        // mimalloc v3's default for the purge delay, and for no option beside it, is 1,000:
        // a wrong index reads another option's value here.
        assert_eq!(purge_delay_ms(), 1_000, "option {PURGE_DELAY} is not mimalloc's purge delay");
        configure();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
