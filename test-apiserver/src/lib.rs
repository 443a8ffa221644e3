//! A small Kubernetes API server for tests of the Kubernetes source: list
//! and `?watch=1` of the kinds the daemon reads (cluster-wide, or in one
//! namespace, as the CLI lists its daemons), from objects the test puts in,
//! with resourceVersions, bookmarks, label and field selectors,
//! metadata-only lists (`as=PartialObjectMetadata`), merge patches of a
//! `TrafficRule`'s status, and compaction: a watch from before it gets
//! `410 Gone` and the client must relist.
//!
//! One copy for two kinds of test: the in-process ones of `tagger-user`
//! (a `kube::Client` on it, feature `kube`) and the two-node end-to-end
//! test of `tests/`, whose daemons find it through a kubeconfig file
//! ([`ApiServer::kubeconfig`]). [`objects`] builds the objects.
pub mod objects;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};

mod query;
mod stream;

use query::{Selector, collection, parse_query};
use stream::shape;

/// A collection the daemon lists and watches: (URL path, kind, apiVersion).
const KINDS: [(&str, &str, &str); 6] = [
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/services", "Service", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    (
        "/apis/tagger.io/v1alpha1/trafficlanes",
        "TrafficLane",
        "tagger.io/v1alpha1",
    ),
    (
        "/apis/tagger.io/v1alpha1/trafficrules",
        "TrafficRule",
        "tagger.io/v1alpha1",
    ),
];

/// An object's identity: (kind, namespace, name).
type Id = (String, String, String);

fn id_of(object: &Value) -> Id {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

/// One change, as a watch shows it: the object before (to tell a selector
/// it stopped matching) and after (`None`: deleted).
struct Change {
    rv: u64,
    before: Option<Value>,
    after: Option<Value>,
}

#[derive(Default)]
struct World {
    rv: u64,
    objects: BTreeMap<Id, Value>,
    log: Vec<Change>,
    /// Watches from before this are answered 410 Gone.
    compacted: u64,
    /// Bumped by a compaction: open watches end.
    epoch: u64,
    /// Status patches received: (namespace, name, body).
    patches: Vec<(String, String, Value)>,
    /// Watches answered 410 Gone.
    gone: usize,
    /// Every list and watch request, in the order they came.
    served: Vec<Served>,
    /// How long a list takes to answer.
    list_delay: std::time::Duration,
}

/// A list or watch request, as it was answered: who asked (two daemons
/// of one test tell themselves apart by their `User-Agent`), for which
/// kind, with which selectors, whether a watch was answered 410 Gone, and
/// how many bytes of body were sent for it (a watch's grow while it is
/// open).
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// When, in seconds since the Unix epoch.
    pub at: f64,
    /// The client's `User-Agent`; empty without one.
    pub client: String,
    pub kind: &'static str,
    pub watch: bool,
    /// A watch from before a compaction: answered 410 Gone.
    pub gone: bool,
    /// The namespace of a namespaced path; `None`: cluster-wide.
    pub namespace: Option<String>,
    /// The `labelSelector` and `fieldSelector` query parameters, as sent.
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// Asked for `PartialObjectMetadata` (metadata only).
    pub metadata_only: bool,
    /// Bytes of response body sent so far.
    pub bytes: u64,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct ApiServer {
    pub addr: SocketAddr,
    world: Arc<Mutex<World>>,
    /// The newest resourceVersion, for watches to wake on.
    notify: watch::Sender<u64>,
}

impl ApiServer {
    pub async fn start(objects: Vec<Value>) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            world: Arc::default(),
            notify: watch::Sender::new(0),
        });
        for object in objects {
            server.apply(object);
        }
        let accept = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = accept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    /// A client that talks plain HTTP to this server.
    #[cfg(feature = "kube")]
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig naming this server (plain `http://`, no credentials),
    /// for a process that finds the API as kubectl does (`KUBECONFIG`).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: \"http://{}\"}}}}]\n\
             users: [{{name: test, user: {{}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n",
            self.addr
        )
    }

    /// Puts objects in as if they had been there before any client came:
    /// each with a resourceVersion, none in the history watches replay
    /// (a big cluster's objects, loaded at once and cheaply).
    pub fn preload(&self, objects: Vec<Value>) {
        let mut world = self.world.lock().unwrap();
        for mut object in objects {
            world.rv += 1;
            object["metadata"]["resourceVersion"] = json!(world.rv.to_string());
            object["metadata"]["generation"] = json!(1);
            if object["metadata"]["uid"].is_null() {
                object["metadata"]["uid"] =
                    json!(format!("00000000-0000-4000-8000-{:012}", world.rv));
            }
            world.objects.insert(id_of(&object), object);
        }
        // Nothing before now can be replayed.
        world.compacted = world.rv;
        self.notify.send_replace(world.rv);
    }

    /// The bytes of JSON the objects take as the API serves them, in
    /// all and by kind.
    pub fn size(&self) -> BTreeMap<String, (usize, u64)> {
        let world = self.world.lock().unwrap();
        let mut sizes: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for ((kind, _, _), object) in &world.objects {
            let entry = sizes.entry(kind.clone()).or_default();
            entry.0 += 1;
            entry.1 += object.to_string().len() as u64;
        }
        sizes
    }

    fn changed(&self, world: &mut World, before: Option<Value>, after: Option<Value>) {
        let rv = world.rv;
        world.log.push(Change { rv, before, after });
        self.notify.send_replace(world.rv);
    }

    /// Creates or replaces an object (as `kubectl apply` would), giving it
    /// a new resourceVersion (and generation, for a changed spec).
    pub fn apply(&self, mut object: Value) {
        let mut world = self.world.lock().unwrap();
        world.rv += 1;
        let id = id_of(&object);
        let before = world.objects.get(&id).cloned();
        let generation = match &before {
            Some(old) if old["spec"] == object["spec"] => old["metadata"]["generation"].clone(),
            Some(old) => json!(old["metadata"]["generation"].as_i64().unwrap_or(0) + 1),
            None => json!(1),
        };
        if let Some(old) = &before
            && object.get("status").is_none()
            && old.get("status").is_some()
        {
            object["status"] = old["status"].clone();
        }
        object["metadata"]["resourceVersion"] = json!(world.rv.to_string());
        object["metadata"]["generation"] = generation;
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", world.rv));
        }
        world.objects.insert(id, object.clone());
        self.changed(&mut world, before, Some(object));
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut world = self.world.lock().unwrap();
        let id = (kind.to_string(), namespace.to_string(), name.to_string());
        let Some(mut before) = world.objects.remove(&id) else {
            panic!("no {kind} {namespace}/{name} to delete")
        };
        world.rv += 1;
        before["metadata"]["resourceVersion"] = json!(world.rv.to_string());
        self.changed(&mut world, Some(before), None);
    }

    /// Changes objects with no watch event for them (as if the events were
    /// lost), then compacts: every open watch ends, and resuming from
    /// before this answers 410 Gone, so clients must relist.
    pub fn replace_silently_and_compact(&self, apply: Vec<Value>, delete: &[(&str, &str, &str)]) {
        let mut world = self.world.lock().unwrap();
        for (kind, ns, name) in delete {
            world
                .objects
                .remove(&(kind.to_string(), ns.to_string(), name.to_string()));
        }
        for mut object in apply {
            world.rv += 1;
            object["metadata"]["resourceVersion"] = json!(world.rv.to_string());
            object["metadata"]["generation"] = json!(1);
            world.objects.insert(id_of(&object), object);
        }
        world.rv += 1;
        world.compacted = world.rv;
        world.epoch += 1;
        world.log.clear();
        self.notify.send_replace(world.rv);
    }

    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let world = self.world.lock().unwrap();
        world
            .objects
            .get(&(kind.to_string(), namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Watches answered 410 Gone so far.
    pub fn gone(&self) -> usize {
        self.world.lock().unwrap().gone
    }

    /// Ends every open watch and answers 410 Gone to any watch resuming
    /// from before now, as a kube-apiserver does once etcd compacted the
    /// history: every client relists.
    pub fn compact(&self) {
        self.replace_silently_and_compact(Vec::new(), &[]);
    }

    /// Every list and watch request so far.
    pub fn served(&self) -> Vec<Served> {
        self.world.lock().unwrap().served.clone()
    }

    /// Lists answer after `delay` (a big cluster's lists take seconds):
    /// a relist is then long enough to see what a client serves meanwhile.
    pub fn set_list_delay(&self, delay: std::time::Duration) {
        self.world.lock().unwrap().list_delay = delay;
    }

    /// Status patches received so far.
    pub fn patches(&self) -> usize {
        self.world.lock().unwrap().patches.len()
    }

    async fn handle(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let path = request.uri().path().to_string();
        let query = parse_query(request.uri().query().unwrap_or(""));
        let client = request
            .headers()
            .get(hyper::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let metadata_only = request
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
        if request.method() == hyper::Method::PATCH {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            return self.patch_status(&path, serde_json::from_slice(&body).unwrap());
        }
        let (collection, namespace) = collection(&path);
        let Some(&(_, kind, api_version)) = KINDS.iter().find(|(p, _, _)| *p == collection) else {
            return respond(404, json!({"kind": "Status", "code": 404, "message": path}));
        };
        let served = Served {
            at: unix_now(),
            client,
            kind,
            watch: false,
            gone: false,
            namespace: namespace.clone(),
            label_selector: query.get("labelSelector").cloned(),
            field_selector: query.get("fieldSelector").cloned(),
            metadata_only,
            bytes: 0,
        };
        let selector = Selector::new(&query).in_namespace(namespace);
        if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let bookmarks = query
                .get("allowWatchBookmarks")
                .is_some_and(|v| v == "true");
            // Whether it is from before a compaction, and the compaction
            // it starts in, read at once.
            let (gone, epoch, index) = {
                let mut world = self.world.lock().unwrap();
                let gone = from < world.compacted;
                world.served.push(Served {
                    watch: true,
                    gone,
                    ..served
                });
                (gone, world.epoch, world.served.len() - 1)
            };
            if gone {
                let response = self.gone_response(from);
                self.count(index, &response);
                return response;
            }
            let count = stream::Count {
                world: self.world.clone(),
                index,
            };
            let from = stream::Resume {
                rv: from,
                epoch,
                count,
            };
            return self.watch(kind, api_version, from, selector, bookmarks, metadata_only);
        }
        let (delay, index) = {
            let mut world = self.world.lock().unwrap();
            world.served.push(served);
            (world.list_delay, world.served.len() - 1)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let response = self.list(kind, api_version, &query, &selector, metadata_only);
        self.count(index, &response);
        response
    }

    /// A list, a page of at most `limit` objects when asked (kube's
    /// watcher asks 500 at a time, and a real API server pages lists
    /// from etcd): `continue` is where the next page starts.
    fn list(
        &self,
        kind: &'static str,
        api_version: &str,
        query: &BTreeMap<String, String>,
        selector: &Selector,
        metadata_only: bool,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let limit: Option<usize> = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0);
        let after: Option<Id> = query
            .get("continue")
            .filter(|c| !c.is_empty())
            .and_then(|c| serde_json::from_str::<(String, String)>(c).ok())
            .map(|(ns, name)| (kind.to_string(), ns, name));
        let world = self.world.lock().unwrap();
        // Objects are keyed (kind, namespace, name): a namespace's are
        // one range of its kind's.
        let start: Id = (
            kind.to_string(),
            selector.namespace().unwrap_or_default().to_string(),
            String::new(),
        );
        let range = match &after {
            Some(after) => world.objects.range((
                std::ops::Bound::Excluded(after.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => world
                .objects
                .range((std::ops::Bound::Included(start), std::ops::Bound::Unbounded)),
        };
        let mut items = Vec::new();
        let mut more = false;
        for ((k, ns, _), object) in range {
            if k != kind || selector.namespace().is_some_and(|want| want != ns) {
                break;
            }
            if !selector.matches(object) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                break;
            }
            items.push(shape(object, metadata_only));
        }
        // The next page starts after the last object of this one.
        let token = more.then(|| items.last()).flatten().map(|last| {
            json!([
                last["metadata"]["namespace"].as_str().unwrap_or_default(),
                last["metadata"]["name"].as_str().unwrap_or_default()
            ])
            .to_string()
        });
        let (list_kind, list_version) = if metadata_only {
            ("PartialObjectMetadataList".to_string(), "meta.k8s.io/v1")
        } else {
            (format!("{kind}List"), api_version)
        };
        let mut metadata = json!({"resourceVersion": world.rv.to_string()});
        if let Some(token) = token {
            metadata["continue"] = json!(token);
        }
        respond(
            200,
            json!({
                "kind": list_kind, "apiVersion": list_version,
                "metadata": metadata,
                "items": items
            }),
        )
    }

    /// Adds a whole response's body to what request `index` was sent.
    fn count(&self, index: usize, response: &Response<BoxBody<Bytes, Infallible>>) {
        use hyper::body::Body;
        let bytes = response.body().size_hint().exact().unwrap_or(0);
        self.world.lock().unwrap().served[index].bytes += bytes;
    }

    fn patch_status(&self, path: &str, patch: Value) -> Response<BoxBody<Bytes, Infallible>> {
        // /apis/tagger.io/v1alpha1/namespaces/NS/trafficrules/NAME/status
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let [
            "apis",
            "tagger.io",
            "v1alpha1",
            "namespaces",
            ns,
            "trafficrules",
            name,
            "status",
        ] = parts[..]
        else {
            return respond(404, json!({"kind": "Status", "code": 404, "message": path}));
        };
        let mut world = self.world.lock().unwrap();
        let id = ("TrafficRule".to_string(), ns.to_string(), name.to_string());
        let Some(before) = world.objects.get(&id).cloned() else {
            return respond(404, json!({"kind": "Status", "code": 404, "message": path}));
        };
        world
            .patches
            .push((ns.to_string(), name.to_string(), patch.clone()));
        world.rv += 1;
        let mut after = before.clone();
        after["status"] = patch["status"].clone();
        after["metadata"]["resourceVersion"] = json!(world.rv.to_string());
        world.objects.insert(id, after.clone());
        self.changed(&mut world, Some(before), Some(after.clone()));
        respond(200, after)
    }
}

fn respond(status: u16, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}
