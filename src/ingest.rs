//! Where this process's inputs go: straight to the local writer (the
//! embedded store), or first into the log that several replicas share
//! (the Redis backend), which hands them to every replica's writer. The
//! HTTP layer and the span exporter submit here and see no difference.

use crate::clock::Millis;
use crate::replica::LogHandle;
use crate::state::{Applied, Input};
use crate::webhook::Delivery;
use crate::writer::{WriteError, WriterHandle};

#[derive(Clone)]
pub enum Ingest {
    Local(WriterHandle),
    Log(LogHandle),
}

impl Ingest {
    /// Applies a delivery received at `at`; once it is durable, what it decided.
    pub async fn submit_webhook(
        &self,
        delivery: Delivery,
        at: Millis,
    ) -> Result<Applied, WriteError> {
        match self {
            Ingest::Local(writer) => writer.submit_webhook(delivery, at).await,
            Ingest::Log(log) => log.submit_webhook(delivery, at).await,
        }
    }

    /// Applies `input` and waits until it is durable.
    pub async fn submit(&self, input: Input) -> Result<(), WriteError> {
        match self {
            Ingest::Local(writer) => writer.submit(input).await,
            Ingest::Log(log) => log.submit(input).await,
        }
    }
}
