//! Files and trees between contexts: push (here to a context), pull (a context to here), and copy
//! (one context to another, through this one). The records, the sink's checks and the handlers
//! are in `hypha_bootstrap::files`.
//!
//! ```no_run
//! # async fn f(web1: hypha_actors::Context, db1: hypha_actors::Context) -> Result<(), hypha_actors::files::FileError> {
//! use hypha_actors::files::{copy, Keep};
//! web1.push("site/", "/srv/www", Keep::mode()).await?;          // a tree, here to web1
//! web1.pull("/var/log/nginx", "logs/web1", Keep::mode().with_times()).await?;
//! copy(&web1, "/srv/www/index.html", &db1, "/tmp", Keep::mode()).await?; // web1 to db1
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use hypha_bootstrap::files::{receive_tree, send_tree, ReadTree, WriteTree};
pub use hypha_bootstrap::files::{FileError, Keep, Transfer};
use hypha_runtime::{Request, StreamError};

use crate::Context;

impl Context {
    /// Send the file or the tree at `src` (here) to `dst` in this context, as `scp -r` would:
    /// into `dst` under its own name if `dst` is a directory there, otherwise as `dst`. Mode is
    /// kept; owner and times when `keep` says. Each file is written to a temporary name, checked
    /// against the source's checksum and renamed into place: a failure leaves no partial file.
    pub async fn push(
        &self,
        src: impl AsRef<Path>,
        dst: impl Into<PathBuf>,
        keep: Keep,
    ) -> Result<Transfer, FileError> {
        self.ready_for::<WriteTree>().await?;
        let req = WriteTree { path: dst.into(), keep };
        let mut tx = self.inner.router.open_upload(self.inner.id, &req).await.map_err(|e| self.located(e))?;
        match send_tree(src.as_ref().to_owned(), keep, &mut tx).await {
            Ok(_) => Ok(tx.answer::<WriteTree>().await.map_err(|e| self.located(e))?),
            // The sink stopped taking the tree: its answer says why.
            Err(FileError::Call(sent)) => match tx.answer::<WriteTree>().await {
                Err(e) => Err(FileError::Call(self.located(e))),
                Ok(_) => Err(FileError::Call(sent)),
            },
            // Dropping the sender aborts the sink, which removes what it had not finished.
            Err(e) => Err(e),
        }
    }

    /// Fetch the file or the tree at `src` in this context to `dst` here (as [`Context::push`],
    /// the other way).
    pub async fn pull(
        &self,
        src: impl Into<PathBuf>,
        dst: impl AsRef<Path>,
        keep: Keep,
    ) -> Result<Transfer, FileError> {
        self.ready_for::<ReadTree>().await?;
        let req = ReadTree { path: src.into(), keep };
        let mut rx = self.inner.router.open_download(self.inner.id, &req).await.map_err(|e| self.located(e))?;
        let (written, ended) = receive_tree(dst.as_ref().to_owned(), keep, &mut rx).await;
        if !ended {
            // Dropping the receiver stops the source.
            return written;
        }
        // The source's own error (a file it could not read) says more than a tree cut short.
        let answer = rx.answer::<ReadTree>().await.map_err(|e| self.located(e));
        match (written, answer) {
            (_, Err(e)) => Err(FileError::Call(e)),
            (written, Ok(_)) => written,
        }
    }
}

/// Copy the file or the tree at `src` in context `from` to `dst` in context `to`, relayed through
/// this process unread (the sink in `to` checks every file against the source's checksum).
pub async fn copy(
    from: &Context,
    src: impl Into<PathBuf>,
    to: &Context,
    dst: impl Into<PathBuf>,
    keep: Keep,
) -> Result<Transfer, FileError> {
    from.ready_for::<ReadTree>().await?;
    to.ready_for::<WriteTree>().await?;
    let read = ReadTree { path: src.into(), keep };
    let mut rx = from.inner.router.open_download(from.inner.id, &read).await.map_err(|e| from.located(e))?;
    let write = WriteTree { path: dst.into(), keep };
    let mut tx = to.inner.router.open_upload(to.inner.id, &write).await.map_err(|e| to.located(e))?;
    loop {
        match rx.recv().await {
            Ok(Some(chunk)) => match tx.send(chunk).await {
                Ok(()) => {}
                // The sink stopped: its answer says why (dropping `rx` stops the source).
                Err(StreamError::Closed | StreamError::Aborted(_)) => break,
                Err(e) => return Err(FileError::Call(to.located(e.into_call_error(to.inner.id, WriteTree::NAME)))),
            },
            Ok(None) => {
                // The source has sent everything, or failed: its answer says which.
                if let Err(e) = rx.answer::<ReadTree>().await {
                    return Err(FileError::Call(from.located(e))); // dropping `tx` aborts the sink
                }
                break;
            }
            Err(e) => return Err(FileError::Call(from.located(e.into_call_error(from.inner.id, ReadTree::NAME)))),
        }
    }
    Ok(tx.answer::<WriteTree>().await.map_err(|e| to.located(e))?)
}
