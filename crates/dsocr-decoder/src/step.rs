//! The decode step of one sequence with its inputs in device memory, captured as a graph and
//! replayed on the GPU backends (issue 11, "launch overhead").
//!
//! A decode step launches hundreds of small kernels, each costing 10–20 µs of host time in
//! Burn; a graph (`burn::tensor::capture`) records those launches once and replays them as one
//! dispatch (a CUDA graph on CUDA; recorded dispatches on WGPU). A replay runs against the
//! buffers the recording used, with the kernel arguments of that recording, so nothing the
//! host changes per step may enter the step as an argument:
//!
//! - the token id and its position live in a device tensor ([`StepInputs::state`]), refreshed
//!   in place before each replay ([`dsocr_nn::overwrite`]);
//! - the embedding row, the RoPE row and the K/V write are indexed on the device by them, the
//!   attention mask is computed from the position ([`Decoder::forward_step`]);
//! - the K/V buffers have a fixed capacity per graph: when a sequence outgrows it they are
//!   grown by [`GRAPH_CHUNK`] positions and the step is recorded again;
//! - the step ends with the argmax on the device, so a replay is followed by one read of one id.
//!   The repeat guard stays on the host: when it bans ids, the bans and the argmax run after
//!   the replay on the graph's logits.
//!
//! Where the device cannot take in-place writes (the CPU backends, which have no graphs) or a
//! MoE layer would read expert ids back to the host, the same [`Decoder::forward_step`] runs
//! eagerly with its inputs uploaded each step.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::{capture, Graph};

use crate::kv_cache::KvCache;
use crate::Decoder;

/// K/V positions added per recording in graph mode (the default
/// [`GenerationConfig::kv_chunk`](crate::GenerationConfig::kv_chunk) there): a sequence that
/// outgrows its buffers is recorded again (about five eager runs of the step), so the step
/// attends over up to this many unwritten (masked) positions in exchange for fewer recordings.
pub const GRAPH_CHUNK: usize = 512;

/// How [`generate`](crate::generate) runs its decode steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepMode {
    /// Recorded as a graph and replayed where the device supports it (the GPU backends, every
    /// MoE layer gathering its experts on the device); eager elsewhere. The environment
    /// variable `DSOCR_GRAPH=0` makes it [`Eager`](StepMode::Eager) (for A/B measurements and
    /// to rule graphs out on a driver).
    #[default]
    Auto,
    /// Every step runs its kernels one by one.
    Eager,
}

impl StepMode {
    /// Whether steps on `decoder` are recorded as graphs in this mode.
    pub fn uses_graph(self, decoder: &Decoder) -> bool {
        self.graphs_possible(decoder) && decoder.steps_on_device()
    }

    /// Whether this mode records graphs on `decoder`'s device at all (a GPU backend, graphs
    /// not disabled); a batched step also needs its row count to run on the device
    /// ([`Decoder::steps_rows_on_device`]).
    pub fn graphs_possible(self, decoder: &Decoder) -> bool {
        let disabled = std::env::var("DSOCR_GRAPH").is_ok_and(|v| matches!(v.trim(), "0" | "off" | "none"));
        self == StepMode::Auto && !disabled && dsocr_nn::overwrites_in_place(&decoder.device())
    }
}

/// The device-resident inputs of [`Decoder::forward_step`].
#[derive(Debug, Clone)]
pub struct StepInputs {
    /// `[2]`: the token id to feed and its position.
    pub state: Tensor<1, Int>,
    /// `0..capacity` of the K/V buffers (for the attention mask).
    pub positions: Tensor<1, Int>,
}

impl StepInputs {
    /// `[token, position]` uploaded, and the positions of a `capacity`-position cache.
    pub fn new(token: u32, position: usize, capacity: usize, device: &Device) -> Self {
        Self { state: state_values(token, position, device), positions: positions(capacity, device) }
    }
}

/// What [`Decoder::forward_step`] leaves on the device.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// `[1, vocab]` in f32.
    pub logits: Tensor<2>,
    /// `[1]`: the argmax of `logits`, lowest id on ties.
    pub token: Tensor<1, Int>,
}

/// How a generation's decode steps ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepReport {
    /// Whether the steps were recorded as graphs and replayed.
    pub graph: bool,
    /// Whether the backend replayed them as hardware graphs (CUDA) rather than by re-running
    /// the recorded closure (the fallback of `burn::tensor::capture`).
    pub hardware: bool,
    /// Recordings made (one per K/V capacity).
    pub captures: usize,
    /// Wall time spent recording (eager runs and capture included).
    pub capture_time: Duration,
}

type StepGraph<'a> = Graph<StepOutput, Box<dyn FnMut() -> StepOutput + 'a>>;

/// Runs the decode steps of one sequence, after its prefill, recording and replaying them as
/// graphs where [`StepMode::uses_graph`] says.
pub(crate) struct Stepper<'a> {
    decoder: &'a Decoder,
    cache: Rc<RefCell<KvCache>>,
    graph_mode: bool,
    chunk: usize,
    capacity: usize,
    /// `0..capacity`, made once per capacity.
    positions: Option<Tensor<1, Int>>,
    /// Graph mode: the state buffer the recorded step reads (made with the recording).
    state: Option<Tensor<1, Int>>,
    graph: Option<StepGraph<'a>>,
    /// The alias of the last in-place state write, kept until the replay that reads it has
    /// been submitted (fusion orders the write by it).
    written: Option<Tensor<1, Int>>,
    report: StepReport,
}

impl<'a> Stepper<'a> {
    /// Takes over the prefilled `cache` (whose chunk the buffers grow by); records graphs if
    /// `graph_mode` ([`StepMode::uses_graph`]).
    pub(crate) fn new(decoder: &'a Decoder, cache: KvCache, graph_mode: bool) -> Self {
        let chunk = cache.chunk();
        let capacity = cache.capacity();
        Self {
            decoder,
            cache: Rc::new(RefCell::new(cache)),
            graph_mode,
            chunk,
            capacity,
            positions: None,
            state: None,
            graph: None,
            written: None,
            report: StepReport { graph: graph_mode, ..StepReport::default() },
        }
    }

    pub(crate) fn report(&self) -> StepReport {
        self.report
    }

    /// Feeds `token` at `position` (the cache's length) and returns the step's logits and
    /// argmax, on the device. In graph mode they are the graph's output buffers: read (or
    /// copy) them before the next step.
    pub(crate) fn step(&mut self, token: u32, position: usize) -> StepOutput {
        let device = self.decoder.device();
        if position >= self.capacity {
            // New buffers: the recorded graph (which holds the old ones) is dropped first.
            self.graph = None;
            self.state = None;
            self.positions = None;
            self.cache.borrow_mut().reserve(position + 1, self.chunk);
            self.capacity = self.cache.borrow().capacity();
        }
        let positions = self.positions.get_or_insert_with(|| positions(self.capacity, &device)).clone();
        let values = state_values(token, position, &device);
        let out = if self.graph_mode {
            match &self.state {
                Some(state) => self.written = Some(dsocr_nn::overwrite(state, values)),
                None => self.state = Some(values),
            }
            if self.graph.is_none() {
                self.record(positions);
            }
            let Some(graph) = self.graph.as_mut() else { unreachable!("recorded above") };
            // Safety (`Graph::replay`'s contract): every tensor the recorded step touches is
            // alive, owned by its closure (the state, the positions and the cache, through
            // the shared `Rc`) or borrowed from `decoder`, which outlives this stepper; the
            // state was refreshed above on this thread's stream, and the output is read on it.
            let out = unsafe { graph.replay() }.clone();
            self.written = None;
            out
        } else {
            self.decoder.forward_step(&StepInputs { state: values, positions }, &mut self.cache.borrow_mut())
        };
        self.cache.borrow_mut().set_len(position + 1);
        out
    }

    /// Records the step over the current buffers. Every run of it writes the same K/V at the
    /// same position from the same state, so the extra runs of a recording change nothing.
    fn record(&mut self, positions: Tensor<1, Int>) {
        let started = Instant::now();
        let Some(state) = self.state.clone() else { return };
        let inputs = StepInputs { state, positions };
        let (decoder, cache) = (self.decoder, self.cache.clone());
        let mut step: Box<dyn FnMut() -> StepOutput + 'a> =
            Box::new(move || decoder.forward_step(&inputs, &mut cache.borrow_mut()));
        // One eager run, read back, before the recording's own warm-up runs: a recording that
        // starts cold fails (burn#5772: the warm-up does not yet run in place).
        let first = step();
        let _ = first.token.into_data();
        let graph = capture(&self.decoder.device(), step);
        self.report.hardware = graph.is_hardware();
        self.report.captures += 1;
        self.report.capture_time += started.elapsed();
        self.graph = Some(graph);
    }
}

fn state_values(token: u32, position: usize, device: &Device) -> Tensor<1, Int> {
    Tensor::<1, Int>::from_data(TensorData::new(vec![token as i64, position as i64], [2]), device)
}

fn positions(capacity: usize, device: &Device) -> Tensor<1, Int> {
    Tensor::<1, Int>::arange(0..capacity as i64, device)
}
