//! `Destination`'s parser, fed arbitrary text.
//!
//! It must not panic; what it accepts must print as text that parses back to the same
//! destination, and must hold nothing `ssh` could read as an option or a second jump host: no
//! part starts with `-`, none holds whitespace, a control character or a `,`.

#![no_main]

use hypha_bootstrap::Destination;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(d) = text.parse::<Destination>() else { return };
    let again: Destination = d.to_string().parse().expect("a destination's text parses");
    assert_eq!(again, d);
    for part in d.user().into_iter().chain([d.host()]) {
        assert!(!part.is_empty() && !part.starts_with('-'), "{text:?}");
        assert!(!part.chars().any(|c| c.is_whitespace() || c.is_control() || c == ','), "{text:?}");
    }
    assert_ne!(d.port(), Some(0));
    assert_eq!(Destination::new(d.user(), d.host(), d.port()).as_ref(), Ok(&d));
});
