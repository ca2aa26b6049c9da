//! The state the edge's tasks share: the settings and token, and one handle per
//! component (hub, media plane, spool, load meter, drain, link). It is the bottom of the
//! crate's tasks: it holds the components' handles and imports only the modules that
//! define them, never the tasks that run over it ([`crate::server`], [`crate::link`]),
//! so the crate's import graph has no cycle (`loadtest/tests/import_graph.rs`).

use std::sync::{Arc, Mutex};

use locus_protocol::EdgeMessage;
use locus_protocol::join_token::JoinKey;
use tokio::sync::mpsc;

use crate::config::{EdgeToken, Settings};
use crate::drain::Drain;
use crate::hub::{Hub, HubConfig};
use crate::link_handle::LinkHandle;
use crate::load::LoadMeter;
use crate::media::Media;
use crate::spool::{Spool, SpoolError, SpoolOptions};

/// Everything the edge's tasks share.
#[derive(Debug)]
pub struct EdgeState {
    pub settings: Settings,
    pub token: EdgeToken,
    pub hub: Arc<Hub>,
    pub media: Arc<Media>,
    pub spool: Spool,
    pub load: Arc<LoadMeter>,
    pub drain: Arc<Drain>,
    pub link: Arc<LinkHandle>,
    /// Open and refused client connections (the serve loop's cap).
    pub http: Arc<locus_serve::Counters>,
    outbox: Mutex<Option<mpsc::Receiver<EdgeMessage>>>,
}

impl EdgeState {
    /// Opens the spool and builds the state (nothing runs until [`crate::server::run`]).
    pub async fn open(settings: Settings, token: EdgeToken) -> Result<Arc<EdgeState>, SpoolError> {
        let spool = Spool::open(
            &settings.spool_dir,
            SpoolOptions {
                max_entries: settings.spool_max_entries,
                ..SpoolOptions::default()
            },
        )
        .await?;
        let media = Media::new(settings.media.clone());
        let hub = Hub::new(
            HubConfig {
                edge_id: settings.edge_id.clone(),
                max_message_bytes: settings.max_message_bytes,
                max_participants: settings.max_participants,
                send_queue: settings.send_queue,
                linger: settings.linger,
            },
            JoinKey::from_edge_token(token.expose()),
            spool.clone(),
            media.clone(),
        );
        let (link, outbox) = LinkHandle::new();
        let load = Arc::new(LoadMeter::with_max_bitrate(settings.max_bitrate));
        Ok(Arc::new(EdgeState {
            drain: Arc::new(Drain::new(settings.drain_deadline)),
            settings,
            token,
            hub,
            media,
            spool,
            load,
            link: Arc::new(link),
            http: Arc::default(),
            outbox: Mutex::new(Some(outbox)),
        }))
    }

    /// The link task's end of the outbox: `Some` once, for the one serve loop.
    pub(crate) fn take_outbox(&self) -> Option<mpsc::Receiver<EdgeMessage>> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
