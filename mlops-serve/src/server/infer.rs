//! The request path: choose a version, enrich, check, cache, run (inline, on the
//! blocking pool or batched), mirror to shadows, record feedback, log and monitor;
//! and the [`Server`] impl around it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use mlops_core::error::ResourceKind;
use mlops_core::inference::{
    InferenceRequest, InferenceResponse, ModelMetadataResponse, PREDICTION_ID, ParameterValue,
    Parameters, ServerMetadataResponse, Tensor,
};
use mlops_core::model::VersionSelector;
use mlops_core::{Error, Result, Server};

use super::ModelServer;
use super::enrich::enrich;
use super::state::{Deployment, LoadedVersion};
use crate::runtime::batch::call_model;
use crate::runtime::cache;
use crate::runtime::metrics::ServerMetrics;
use crate::runtime::shadow::ShadowRecord;
use crate::status::http_status;

impl ModelServer {
    /// Runs `loaded` on `inputs`; `checked` for the primary version, whose
    /// signature `call_model` checks the inputs against (a shadow's inputs were
    /// made for the primary's signature: `predict` checks them against its own).
    pub(super) async fn run_model(
        &self,
        name: &str,
        loaded: &LoadedVersion,
        inputs: Vec<Tensor>,
        inline_max_rows: Option<usize>,
        checked: bool,
    ) -> Result<Vec<Tensor>> {
        let rows = inputs.first().map_or(0, Tensor::rows);
        let timer = loaded.calls.timer();
        let inline = match inline_max_rows {
            Some(max) => rows <= max,
            None => timer.runs_inline(rows),
        };
        match &loaded.batcher {
            Some(b) => b.submit(name, inputs).await,
            // A fixed rule needs no timing: the two clock reads are skipped.
            None if inline && inline_max_rows.is_some() => {
                call_model(loaded.predictor.as_ref(), &inputs, checked)
            }
            None if inline => {
                let started = Instant::now();
                let out = call_model(loaded.predictor.as_ref(), &inputs, checked);
                timer.record(rows, started.elapsed());
                out
            }
            None => {
                loaded
                    .calls
                    .call(name, loaded.predictor.clone(), inputs, checked)
                    .await
            }
        }
    }

    pub(super) async fn infer_inner(
        &self,
        name: &str,
        version: Option<&str>,
        request: InferenceRequest,
        version_label: &mut Option<u64>,
        served: &mut Option<Arc<LoadedVersion>>,
        started: Instant,
    ) -> Result<InferenceResponse> {
        if self.is_draining() {
            return Err(Error::Unavailable {
                what: "model server".into(),
                reason: "shutting down".into(),
            });
        }
        let d = self.deployment(name)?;
        let state = d.state();
        let loaded = self.choose(name, &state, version, &request)?;
        let number = loaded.version.version;
        *version_label = Some(number);
        let signature = loaded.predictor.signature();

        let InferenceRequest {
            id,
            inputs,
            outputs: wanted,
            ..
        } = request;
        // A model's `[N, F]` matrix form becomes its per-column inputs here, so
        // the cache, batching, monitoring and logging all see one form.
        let inputs = signature.columns_from_matrix(inputs)?;
        let inputs = match &d.config.enrichment {
            Some(e) => enrich(name, e, &loaded.version, signature, inputs).await?,
            None => inputs,
        };
        // A batched request is checked here, before it joins a batch, so a bad one
        // fails alone. An unbatched one is checked where it runs (`call_model`), once:
        // until then it is only hashed for the cache (no invalid input was ever
        // cached) and copied for shadows (mirrored only after the primary answered).
        if loaded.batcher.is_some() {
            signature.check_inputs(&inputs)?;
        }
        if let Some(wanted) = &wanted
            && let Some(unknown) = wanted
                .iter()
                .find(|w| !signature.outputs.iter().any(|o| o.name == w.name))
        {
            let names: Vec<&str> = signature.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(Error::invalid_input(
                format!("output '{}'", unknown.name),
                format!("the model has no such output; its outputs are {names:?}"),
            ));
        }

        // Inputs above the cache's key limit are not cached: their key would copy
        // them whole, and one such entry could push out thousands of small ones.
        let key = d
            .cache
            .as_ref()
            .filter(|c| c.admits(&inputs))
            .map(|_| cache::key(&inputs));
        let cached = match (&d.cache, &key) {
            (Some(c), Some(k)) => {
                let hit = c.get(number, k);
                let outcome = if hit.is_some() { "hit" } else { "miss" };
                ServerMetrics::count(&self.inner.metrics.cache, name, outcome);
                hit
            }
            _ => None,
        };
        let mirrored: Vec<u64> = state
            .shadows
            .iter()
            .copied()
            .filter(|&s| s != number)
            .collect();
        let shadow_inputs = (!mirrored.is_empty()).then(|| inputs.clone());
        let inline = d.config.inline_max_rows;
        let logger = self.inner.logger.lock().ok().and_then(|l| l.clone());
        let kept_inputs = (loaded.monitor.is_some() || logger.is_some()).then(|| inputs.clone());
        let outputs: Vec<Tensor> = match cached {
            Some(o) => o.as_ref().clone(),
            None => {
                let o = self.run_model(name, &loaded, inputs, inline, true).await?;
                if let (Some(c), Some(k)) = (&d.cache, key) {
                    c.insert(number, k, Arc::new(o.clone()));
                }
                o
            }
        };
        if let Some(inputs) = shadow_inputs {
            let primary = Arc::new(outputs.clone());
            for shadow_number in mirrored {
                if let Some(shadow) = state.versions.get(&shadow_number).cloned() {
                    self.mirror(
                        &d,
                        name,
                        id.clone(),
                        number,
                        shadow,
                        inputs.clone(),
                        primary.clone(),
                        inline,
                    );
                }
            }
        }
        let outputs = match &wanted {
            None => outputs,
            Some(w) => outputs
                .into_iter()
                .filter(|o| w.iter().any(|x| x.name == o.name))
                .collect(),
        };
        // Feedback names the answer by an id the server issues (unguessable):
        // the client's request id is a correlation field only, so one client
        // cannot label another's predictions by guessing or reusing ids.
        let mut parameters = Parameters::default();
        if let Some(book) = &d.feedback {
            let prediction = new_prediction_id()?;
            book.record_prediction(&prediction, number, &outputs);
            parameters.insert(PREDICTION_ID.to_owned(), ParameterValue::String(prediction));
        }
        if let Some(inputs) = kept_inputs {
            if let Some(l) = &logger {
                l.log(
                    id.clone(),
                    name,
                    number,
                    &inputs,
                    &outputs,
                    started.elapsed(),
                );
            }
            if let Some(m) = &loaded.monitor {
                m.observe(inputs, outputs.clone());
            }
        }
        *served = Some(loaded);
        Ok(InferenceResponse {
            model_name: name.to_owned(),
            model_version: Some(number.to_string()),
            id,
            parameters,
            outputs,
        })
    }

    /// Runs the shadow version off the request path and records both answers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mirror(
        &self,
        d: &Arc<Deployment>,
        name: &str,
        request_id: Option<String>,
        primary_version: u64,
        shadow: Arc<LoadedVersion>,
        inputs: Vec<Tensor>,
        primary: Arc<Vec<Tensor>>,
        inline_max_rows: Option<usize>,
    ) {
        let Ok(permit) = self.inner.shadow_permits.clone().try_acquire_owned() else {
            ServerMetrics::count(&self.inner.metrics.shadow, name, "skipped");
            return;
        };
        let server = self.clone();
        let deployment = Arc::downgrade(d);
        let name = name.to_owned();
        tokio::spawn(async move {
            let _permit = permit;
            let answer = server
                .run_model(&name, &shadow, inputs, inline_max_rows, false)
                .await;
            let outcome = if answer.is_ok() { "ok" } else { "error" };
            ServerMetrics::count(&server.inner.metrics.shadow, &name, outcome);
            let Some(d) = deployment.upgrade() else {
                return;
            };
            let record = ShadowRecord {
                request_id,
                primary_version,
                shadow_version: shadow.version.version,
                primary: primary.as_ref().clone(),
                shadow: answer.map_err(|e| e.to_string()),
                at: SystemTime::now(),
            };
            d.shadow_log.push(record);
        });
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Server for ModelServer {
    async fn live(&self) -> Result<bool> {
        Ok(true)
    }

    async fn ready(&self) -> Result<bool> {
        Ok(self.is_ready())
    }

    async fn server_metadata(&self) -> Result<ServerMetadataResponse> {
        Ok(ServerMetadataResponse {
            name: self.inner.name.clone(),
            version: self.inner.version.clone(),
            extensions: vec!["binary_tensor_data".into(), "model_repository".into()],
        })
    }

    async fn list_models(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .deployments
            .read()
            .map_err(|_| Error::backend("model server", "deployment table poisoned"))?
            .keys()
            .cloned()
            .collect())
    }

    async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadataResponse> {
        let d = self.deployment(model)?;
        let state = d.state();
        let number = match version {
            Some(v) => v
                .parse::<VersionSelector>()
                .ok()
                .and_then(|s| state.number_of(&s))
                .ok_or_else(|| {
                    Error::not_found(ResourceKind::ModelVersion, format!("{model}/{v}"))
                })?,
            None => state
                .number_of(&state.routing.primary())
                .ok_or_else(|| Error::not_found(ResourceKind::ModelVersion, model))?,
        };
        let loaded = state.versions.get(&number).ok_or_else(|| {
            Error::not_found(ResourceKind::ModelVersion, format!("{model}/{number}"))
        })?;
        let sig = loaded.predictor.signature();
        Ok(ModelMetadataResponse {
            name: model.to_owned(),
            versions: Some(state.versions.keys().map(ToString::to_string).collect()),
            platform: loaded.version.flavor.clone(),
            inputs: sig.inputs.clone(),
            outputs: sig.outputs.clone(),
            matrix_input: sig.matrix_input.clone(),
        })
    }

    async fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool> {
        self.is_model_ready(model, version)
    }

    async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferenceRequest,
    ) -> Result<InferenceResponse> {
        let started = Instant::now();
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&self.inner.in_flight);
        let mut version_label = None;
        let mut served = None;
        let result = self
            .infer_inner(
                model,
                version,
                request,
                &mut version_label,
                &mut served,
                started,
            )
            .await;
        match (&result, served) {
            (Ok(_), Some(loaded)) => {
                loaded.ok_requests.inc();
                loaded.latency.observe(started.elapsed().as_secs_f64());
            }
            (result, _) => {
                let status = result.as_ref().map_or_else(http_status, |_| 200);
                // Only names and versions the server has are label values: made-up
                // ones must neither grow the metrics nor write into them.
                let (label, version) = match version_label {
                    Some(n) if self.has_model(model) => (model, n.to_string()),
                    _ => self.labels_of(model, version),
                };
                self.inner
                    .metrics
                    .observe_request(label, &version, status, started.elapsed());
            }
        }
        result
    }
}

/// Bytes of the operating system's CSPRNG fetched at once per thread: one
/// system call per 256 ids instead of one per answer. Each byte is used once.
const ID_POOL_BYTES: usize = 16 * 256;

thread_local! {
    /// Unused CSPRNG bytes of this thread, and how many are used.
    static ID_POOL: std::cell::RefCell<(Vec<u8>, usize)> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// 128 bits from the operating system's CSPRNG, as 32 hex digits.
fn new_prediction_id() -> Result<String> {
    ID_POOL.with_borrow_mut(|(pool, used)| {
        if *used + 16 > pool.len() {
            // Filled aside: a failed fill leaves no half-random bytes to use.
            let mut fresh = vec![0u8; ID_POOL_BYTES];
            getrandom::fill(&mut fresh).map_err(|e| Error::backend("getrandom", e.to_string()))?;
            *pool = fresh;
            *used = 0;
        }
        let id = hex::encode(&pool[*used..*used + 16]);
        *used += 16;
        Ok(id)
    })
}
