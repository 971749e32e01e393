//! `Secret<T>`: a value that travels (it serializes as the value itself) but never prints.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that is never printed: its `Debug` is `Secret(..)`, it has no `Display`, and it does
/// not appear in logs, errors or Debug output that contain it. It travels in calls and method
/// configurations like the value itself. Reach the value with [`Secret::expose`].
///
/// ```
/// use hypha_runtime::Secret;
/// let pw = Secret::new("hunter2".to_owned());
/// assert_eq!(format!("{pw:?}"), "Secret(..)");
/// assert_eq!(pw.expose(), "hunter2");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Keep `value` secret.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// The value, no longer kept secret.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}
