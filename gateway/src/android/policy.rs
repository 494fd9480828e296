//! Repeated patches of one policy within `policy_merge_ms` become one `policies.patch`: the first
//! patch opens a window, later ones fold into it, and every caller gets the one reply.
//!
//! Folding: a patch without `updateMask` replaces the whole policy, so it replaces what was
//! pending; a patch with a mask sets (or clears) those top-level fields on top of what was
//! pending, and the masks are joined (a pending full replacement stays a full replacement).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdm_android::command::Method;
use serde_json::{Map, Value as Json};
use tokio::sync::oneshot;

use super::budget::Priority;
use super::client::{AmapiClient, AmapiError};

/// One policy's pending patch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MergedPatch {
    pub body: Map<String, Json>,
    /// `None`: replace every field.
    pub mask: Option<BTreeSet<String>>,
}

impl MergedPatch {
    pub fn fold(&mut self, body: Map<String, Json>, mask: Option<Vec<String>>) {
        match mask {
            None => {
                self.body = body;
                self.mask = None;
            }
            Some(fields) => {
                for f in &fields {
                    match body.get(f) {
                        Some(v) => {
                            self.body.insert(f.clone(), v.clone());
                        }
                        None => {
                            self.body.remove(f);
                        }
                    }
                }
                if let Some(m) = &mut self.mask {
                    m.extend(fields);
                }
            }
        }
    }
}

type Waiter = oneshot::Sender<Result<Json, AmapiError>>;

#[derive(Debug)]
struct Pending {
    patch: MergedPatch,
    waiters: Vec<Waiter>,
}

#[derive(Debug)]
pub struct PolicyMerger {
    window: Duration,
    pending: Mutex<HashMap<String, Pending>>,
}

impl PolicyMerger {
    pub fn new(window: Duration) -> PolicyMerger {
        PolicyMerger { window, pending: Mutex::new(HashMap::new()) }
    }

    /// Patches `name` (`enterprises/<e>/policies/<p>`) with `body`, merged with other patches of
    /// the same policy arriving within the window. `mask`: the top-level fields to update
    /// (`updateMask`), or `None` for all.
    pub async fn patch(
        self: &Arc<Self>,
        client: Arc<AmapiClient>,
        name: String,
        body: Map<String, Json>,
        mask: Option<Vec<String>>,
    ) -> Result<Json, AmapiError> {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get_mut(&name) {
                Some(p) => {
                    p.patch.fold(body, mask);
                    p.waiters.push(tx);
                    false
                }
                None => {
                    let mut patch = MergedPatch { body: Map::new(), mask: Some(BTreeSet::new()) };
                    patch.fold(body, mask);
                    pending.insert(name.clone(), Pending { patch, waiters: vec![tx] });
                    true
                }
            }
        };
        if first {
            let this = self.clone();
            let name = name.clone();
            tokio::spawn(async move {
                tokio::time::sleep(this.window).await;
                let Some(p) = this.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&name) else {
                    return;
                };
                let merged = p.waiters.len();
                let query: Vec<(String, String)> = match &p.patch.mask {
                    Some(m) => vec![("updateMask".to_owned(), m.iter().cloned().collect::<Vec<_>>().join(","))],
                    None => Vec::new(),
                };
                tracing::debug!(policy = %name, merged, "policies.patch");
                let body = Json::Object(p.patch.body);
                let result = client.call(Method::Patch, &name, &query, Some(&body), Priority::Interactive).await;
                for w in p.waiters {
                    let _ = w.send(result.clone());
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err(AmapiError::Unavailable { attempts: 0, detail: "the patch was dropped".into() }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn folding_patches() {
        let mut p = MergedPatch { body: Map::new(), mask: Some(BTreeSet::new()) };
        p.fold(obj(json!({"cameraDisabled": true})), Some(vec!["cameraDisabled".into()]));
        p.fold(obj(json!({"screenCaptureDisabled": true})), Some(vec!["screenCaptureDisabled".into()]));
        p.fold(obj(json!({})), Some(vec!["cameraDisabled".into()]));
        assert_eq!(Json::Object(p.body.clone()), json!({"screenCaptureDisabled": true}));
        assert_eq!(
            p.mask.clone().unwrap().into_iter().collect::<Vec<_>>(),
            ["cameraDisabled", "screenCaptureDisabled"]
        );
        // A full replacement wins over what was pending, and stays full.
        p.fold(obj(json!({"statusReportingSettings": {}})), None);
        p.fold(obj(json!({"cameraDisabled": false})), Some(vec!["cameraDisabled".into()]));
        assert_eq!(Json::Object(p.body.clone()), json!({"statusReportingSettings": {}, "cameraDisabled": false}));
        assert_eq!(p.mask, None);
    }
}
