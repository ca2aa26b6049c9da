//! What the rest of the edge sees of the locator link: a bounded outbox for the
//! messages the drain sends (`Draining`, `DrainDeadline`), whether a locator is
//! connected, and whether what was queued has been written. The link task
//! ([`crate::link`]) owns the other end; this handle imports nothing of the edge, so the
//! drain and the shared state can hold it without depending on the link task.

use std::time::Duration;

use locus_protocol::EdgeMessage;
use tokio::sync::{mpsc, watch};

/// Messages the drain may queue for the link.
const OUTBOX: usize = 64;

/// What the rest of the edge sees of the link.
#[derive(Debug)]
pub struct LinkHandle {
    outbox: mpsc::Sender<EdgeMessage>,
    connected: watch::Sender<Option<String>>,
    /// Messages queued in the outbox so far, and of those, written to a locator: the
    /// drain waits for its `Draining` to be written before the process exits.
    queued: std::sync::atomic::AtomicU64,
    written: watch::Sender<u64>,
}

impl LinkHandle {
    /// The handle and the outbox the link task reads.
    pub fn new() -> (LinkHandle, mpsc::Receiver<EdgeMessage>) {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        (
            LinkHandle {
                outbox,
                connected: watch::channel(None).0,
                queued: std::sync::atomic::AtomicU64::new(0),
                written: watch::channel(0).0,
            },
            rx,
        )
    }

    /// Queues a message for the locator: sent now, or after the next `Welcome`. False
    /// when the outbox is full.
    pub fn send(&self, message: EdgeMessage) -> bool {
        // Counted before the message can be taken, so `written` never passes `queued`.
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let sent = self.outbox.try_send(message).is_ok();
        if !sent {
            self.queued
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        sent
    }

    /// Waits (at most `within`) until every message queued so far has been written to
    /// a locator (or lost with a link that broke while writing it). False when the time
    /// ran out (no link, or a slow one).
    pub async fn flushed(&self, within: Duration) -> bool {
        let target = self.queued.load(std::sync::atomic::Ordering::SeqCst);
        let mut written = self.written.subscribe();
        tokio::time::timeout(within, written.wait_for(|n| *n >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// True between `Welcome` and the end of that connection.
    pub fn is_connected(&self) -> bool {
        self.connected.borrow().is_some()
    }

    /// The link URL of the locator currently connected.
    pub fn locator(&self) -> Option<String> {
        self.connected.borrow().clone()
    }

    /// The link task: up (`Some(url)`, after `Welcome`) or down.
    pub(crate) fn set_connected(&self, url: Option<String>) {
        self.connected.send_replace(url);
    }

    /// The link task: one queued message written to a locator.
    pub(crate) fn note_written(&self) {
        self.written.send_modify(|n| *n += 1);
    }

    /// Changes when the link comes up (`Some(url)`) or goes down.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.connected.subscribe()
    }
}
