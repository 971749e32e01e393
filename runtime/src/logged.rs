//! How calls appear in logs: each value's `Debug` text, cut to a length (Mitogen's
//! `HYPHA_LOGGED_VALUE_MAX_LEN` / `HYPHA_LOGGED_TRUNCATED_VALUE_SUFFIX` idea): a log line stays
//! short whatever a call carries, and a [`Secret`](crate::Secret) prints as `Secret(..)`.

use std::fmt::{Debug, Write};
use std::sync::OnceLock;

/// The environment variable that sets how many characters of a value a log line shows (50).
pub const MAX_LEN_ENV: &str = "HYPHA_LOGGED_VALUE_MAX_LEN";
/// The environment variable that sets what follows a value that was cut (`<...>`).
pub const SUFFIX_ENV: &str = "HYPHA_LOGGED_TRUNCATED_VALUE_SUFFIX";

fn settings() -> &'static (usize, String) {
    static SETTINGS: OnceLock<(usize, String)> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let max = std::env::var(MAX_LEN_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(50);
        let suffix = std::env::var(SUFFIX_ENV).unwrap_or_else(|_| "<...>".to_owned());
        (max, suffix)
    })
}

/// `value`'s `Debug` text, cut to the configured length.
pub fn logged(value: &dyn Debug) -> String {
    let (max, suffix) = settings();
    cut(value, *max, suffix)
}

/// `value`'s `Debug` text, cut to `max` characters followed by `suffix`. Formats no more than it
/// keeps (a huge value costs no more than a small one).
pub fn cut(value: &dyn Debug, max: usize, suffix: &str) -> String {
    struct Bounded {
        out: String,
        left: usize,
        cut: bool,
    }
    impl Write for Bounded {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for c in s.chars() {
                if self.left == 0 {
                    self.cut = true;
                    return Err(std::fmt::Error);
                }
                self.out.push(c);
                self.left -= 1;
            }
            Ok(())
        }
    }
    let mut w = Bounded { out: String::new(), left: max, cut: false };
    let _ = write!(w, "{value:?}");
    if w.cut {
        w.out.push_str(suffix);
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_short_ones_kept() {
        assert_eq!(cut(&"short", 50, "<...>"), "\"short\"");
        assert_eq!(cut(&"x".repeat(1000), 10, "<...>"), format!("\"{}<...>", "x".repeat(9)));
        assert_eq!(cut(&vec![1u8; 5], 7, "~"), "[1, 1, ~");
        assert_eq!(cut(&crate::Secret::new("hunter2"), 50, "<...>"), "Secret(..)");
    }
}
