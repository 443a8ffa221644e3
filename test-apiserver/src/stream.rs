//! `?watch=1`: the changes after a resourceVersion as watch events, then
//! live ones, with a bookmark now and then; 410 Gone from before a
//! compaction.
use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::{Response, body::Frame};
use serde_json::{Value, json};

use super::{ApiServer, Change, World, query::Selector};

/// Where a watch's bytes are counted: its entry in the served log.
pub(super) struct Count {
    pub world: std::sync::Arc<std::sync::Mutex<World>>,
    pub index: usize,
}

/// Where a watch starts: after this resourceVersion, in this compaction
/// epoch (it ends with the epoch); and where its bytes are counted.
pub(super) struct Resume {
    pub rv: u64,
    pub epoch: u64,
    pub count: Count,
}

impl ApiServer {
    /// A watch from before the last compaction: one `ERROR` event, 410
    /// Gone, as kube-apiserver sends it (in a 200 response).
    pub(super) fn gone_response(&self, from: u64) -> Response<BoxBody<Bytes, Infallible>> {
        let compacted = {
            let mut world = self.world.lock().unwrap();
            world.gone += 1;
            world.compacted
        };
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({compacted})"),
            "reason": "Expired", "code": 410}});
        Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(http_body_util::Full::new(Bytes::from(
                format!("{gone}\n"),
            ))))
            .unwrap()
    }

    /// Watch events after `from` (which is not before the last compaction:
    /// [`ApiServer::gone_response`]) until the next compaction.
    pub(super) fn watch(
        &self,
        kind: &'static str,
        api_version: &'static str,
        from: Resume,
        selector: Selector,
        bookmarks: bool,
        metadata_only: bool,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let world = self.world.clone();
        let mut notify = self.notify.subscribe();
        let line = |event: Value| Bytes::from(format!("{event}\n"));
        let Resume {
            rv: mut cursor,
            epoch,
            count,
        } = from;
        tokio::spawn(async move {
            loop {
                let events: Vec<Value> = {
                    let w = world.lock().unwrap();
                    if w.epoch != epoch {
                        return;
                    }
                    let events = w
                        .log
                        .iter()
                        .filter(|c| c.rv > cursor)
                        .filter_map(|c| event(c, kind, &selector, metadata_only))
                        .collect();
                    cursor = w.rv;
                    events
                };
                for event in events {
                    if tx.send(line(event)).await.is_err() {
                        return;
                    }
                }
                if bookmarks {
                    let mut mark = json!({"kind": kind, "apiVersion": api_version,
                                          "metadata": {"resourceVersion": cursor.to_string()}});
                    if metadata_only {
                        mark = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                      "metadata": {"resourceVersion": cursor.to_string()}});
                    }
                    if tx
                        .send(line(json!({"type": "BOOKMARK", "object": mark})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // Woken by a change, or a bookmark now and then.
                let _ = tokio::time::timeout(Duration::from_millis(500), notify.changed()).await;
            }
        });
        let stream = futures::stream::unfold((rx, count), |(mut rx, count)| async move {
            let chunk = rx.recv().await?;
            count.world.lock().unwrap().served[count.index].bytes += chunk.len() as u64;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), (rx, count)))
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }
}

/// A change as the watch event a selector sees: an object that starts or
/// stops matching is ADDED or DELETED.
fn event(change: &Change, kind: &str, selector: &Selector, metadata_only: bool) -> Option<Value> {
    let of_kind = |o: &&Value| o["kind"] == kind;
    let before = change
        .before
        .as_ref()
        .filter(of_kind)
        .filter(|o| selector.matches(o));
    let after = change
        .after
        .as_ref()
        .filter(of_kind)
        .filter(|o| selector.matches(o));
    let (kind, object) = match (before, after) {
        (None, Some(after)) => ("ADDED", after.clone()),
        (Some(_), Some(after)) => ("MODIFIED", after.clone()),
        // Deleted, or no longer selected: the object as it is now.
        (Some(before), None) => (
            "DELETED",
            change.after.clone().unwrap_or_else(|| before.clone()),
        ),
        (None, None) => return None,
    };
    Some(json!({"type": kind, "object": shape(&object, metadata_only)}))
}

/// The object, or its metadata only.
pub(super) fn shape(object: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
               "metadata": object["metadata"]})
    } else {
        object.clone()
    }
}
