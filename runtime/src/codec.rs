//! The msgpack encoding of every body that is not raw bytes: requests, answers, errors, control
//! messages and stream credit. A leaf, with nothing of hypha's own in it.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, rmp_serde::encode::Error> {
    let mut w = BytesMut::with_capacity(64).writer();
    rmp_serde::encode::write(&mut w, value)?;
    Ok(w.into_inner().freeze())
}

pub(crate) fn decode_value<T: DeserializeOwned>(body: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(body)
}
