//! A call that waits on I/O gives its CPU place up (see `cpu_share.rs`).
//!
//! A plugin granted the network waits on it through `wasi:io`: a pollable's
//! `block`, `poll`, or a stream's `blocking-*` methods (an HTTP response, a
//! TCP peer, a timer). With a slow device behind `relay`, calls holding
//! every one of the plugin's places while they wait would keep its other
//! commands from running at all. So these imports are the library's own
//! (`wasmtime-wasi-io`), wrapped: an operation that is ready at once runs
//! as it is; one that must wait lets the place go and takes one again
//! after. The wait still counts against the call's deadline: unlike a
//! store write (`host_wait.rs`), it is the plugin's choice of peer.
//!
//! Linked over the WASI linker's versions of the same interfaces
//! ([`add_to_linker`]).

use std::future::Future;

use futures::FutureExt;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::{poll, streams};

use super::cpu_share::Running;
use super::sandbox::Sandbox;

/// The instance's handles and its call's place: what an I/O wait needs.
pub struct Waits<'a> {
    table: &'a mut ResourceTable,
    running: &'a mut Running,
}

struct PlaceGivingIo;

impl HasData for PlaceGivingIo {
    type Data<'a> = Waits<'a>;
}

/// Replaces the linker's `wasi:io/poll` and `wasi:io/streams` with these.
pub fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker::<Sandbox, PlaceGivingIo>(linker, Sandbox::io_waits)?;
    streams::add_to_linker::<Sandbox, PlaceGivingIo>(linker, Sandbox::io_waits)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl<'a> Waits<'a> {
    pub fn new(table: &'a mut ResourceTable, running: &'a mut Running) -> Self {
        Self { table, running }
    }
}

/// Runs `wait`, without the call's place while it is not ready.
async fn without_place<F: Future>(running: &mut Running, wait: F) -> F::Output {
    let mut wait = std::pin::pin!(wait);
    if let Some(done) = wait.as_mut().now_or_never() {
        return done;
    }
    running.pause();
    let done = wait.await;
    running.resume().await;
    done
}

impl poll::Host for Waits<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let wait = poll::Host::poll(&mut *self.table, pollables);
        without_place(self.running, wait).await
    }
}

impl poll::HostPollable for Waits<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let wait = poll::HostPollable::block(&mut *self.table, pollable);
        without_place(self.running, wait).await
    }

    async fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(&mut *self.table, pollable).await
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(&mut *self.table, pollable)
    }
}

impl streams::Host for Waits<'_> {
    fn convert_stream_error(
        &mut self,
        err: wasmtime_wasi::p2::StreamError,
    ) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(&mut *self.table, err)
    }
}

impl streams::HostInputStream for Waits<'_> {
    async fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        streams::HostInputStream::drop(&mut *self.table, stream).await
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(&mut *self.table, stream, len)
    }

    async fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        let wait = streams::HostInputStream::blocking_read(&mut *self.table, stream, len);
        without_place(self.running, wait).await
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(&mut *self.table, stream, len)
    }

    async fn blocking_skip(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let wait = streams::HostInputStream::blocking_skip(&mut *self.table, stream, len);
        without_place(self.running, wait).await
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(&mut *self.table, stream)
    }
}

impl streams::HostOutputStream for Waits<'_> {
    async fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        streams::HostOutputStream::drop(&mut *self.table, stream).await
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(&mut *self.table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(&mut *self.table, stream, bytes)
    }

    async fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let wait =
            streams::HostOutputStream::blocking_write_and_flush(&mut *self.table, stream, bytes);
        without_place(self.running, wait).await
    }

    async fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        let wait = streams::HostOutputStream::blocking_write_zeroes_and_flush(
            &mut *self.table,
            stream,
            len,
        );
        without_place(self.running, wait).await
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(&mut *self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(&mut *self.table, stream)
    }

    async fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        let wait = streams::HostOutputStream::blocking_flush(&mut *self.table, stream);
        without_place(self.running, wait).await
    }

    fn splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(&mut *self.table, dest, src, len)
    }

    async fn blocking_splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let wait = streams::HostOutputStream::blocking_splice(&mut *self.table, dest, src, len);
        without_place(self.running, wait).await
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(&mut *self.table, stream)
    }
}
