//! What a running stage sees: its inputs, its outputs, and the run it belongs to.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::{select, Receiver, Sender};
use indicatif::ProgressBar;

use crate::artifact::{Artifact, ArtifactWriter, Format};
use crate::error::StageError;
use crate::section::{self, Section, Sections};
use crate::stage::StreamPort;

/// One item of a stream. Any `Send + Sync` value; shared, not copied, on fan-out.
pub type Item = Arc<dyn Any + Send + Sync>;

pub(crate) enum Msg {
    Item(Item),
    /// The producer finished normally. A channel that disconnects without it broke off.
    End,
}

pub(crate) struct StreamIn {
    pub producer: String,
    pub rx: Receiver<Msg>,
    pub ended: bool,
}

pub(crate) struct StreamOut {
    pub consumers: Vec<(String, Sender<Msg>)>,
}

/// Identity of the running node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub stage: String,
    pub kind: String,
    pub epoch: Option<u32>,
    pub seed: u64,
    /// The part a part node computes (a sharded run, see [`crate::shard`]).
    pub shard: Option<crate::shard::Shard>,
    /// How many parts a combine node joins (0 for other nodes).
    pub parts: u32,
    /// (round, rounds) of a node computed in several rounds ([`crate::Stage::rounds`]).
    pub round: Option<(u32, u32)>,
}

pub struct Context {
    pub(crate) info: NodeInfo,
    pub(crate) sections: Sections,
    pub(crate) base_dir: std::path::PathBuf,
    pub(crate) streams_in: BTreeMap<String, StreamIn>,
    pub(crate) streams_out: BTreeMap<String, StreamOut>,
    pub(crate) artifacts_in: BTreeMap<String, Artifact>,
    pub(crate) writers: BTreeMap<String, ArtifactWriter>,
    /// Disconnects when the run is cancelled; every blocking call watches it.
    pub(crate) cancel: Receiver<()>,
    pub(crate) progress: ProgressBar,
}

impl Context {
    pub fn node(&self) -> &NodeInfo {
        &self.info
    }
    pub fn epoch(&self) -> Option<u32> {
        self.info.epoch
    }
    pub fn seed(&self) -> u64 {
        self.info.seed
    }
    /// The share of the batches this node computes, in a sharded run; `None`: all of them.
    /// A stage that declares itself [`crate::Stage::shardable`] processes only the batches
    /// that [`crate::shard::Shard::takes`], in the order and sizes one process would.
    pub fn shard(&self) -> Option<crate::shard::Shard> {
        self.info.shard
    }

    /// In a sharded run of a kind that takes several rounds ([`crate::Stage::rounds`]): which
    /// round this part or join is (0-based), of how many. `None` outside such a run, where
    /// one [`crate::Stage::run`] does every round.
    pub fn round(&self) -> Option<(u32, u32)> {
        self.info.round
    }

    /// Which of `n` items, taken `batch` at a time, this node processes: all of them, or in
    /// a part node its share of whole batches ([`crate::shard::Shard::items`]).
    pub fn shard_items(&self, n: usize, batch: usize) -> std::ops::Range<usize> {
        self.shard().map_or(0..n, |s| s.items(n, batch))
    }

    /// In a combine node: the parts' stored `output`, in part order.
    pub fn parts(&self, output: &str) -> Result<Vec<&Artifact>, StageError> {
        if self.info.parts == 0 {
            return Err(StageError::msg(format!(
                "`{}` is not joining parts: it has no parts of `{output}`",
                self.info.name
            )));
        }
        (0..self.info.parts)
            .map(|q| self.input(crate::shard::part_port(q, output)))
            .collect()
    }

    /// Joins the parts of every table output as one process writes it: the parts' batches
    /// in part order, in the parts' format, with their metadata (which must agree).
    pub fn concat_parts(&mut self) -> Result<(), StageError> {
        let outs: Vec<String> = self.writers.keys().cloned().collect();
        for out in outs {
            self.concat_part(&out)?;
        }
        Ok(())
    }

    /// [`Context::concat_parts`] for one output.
    pub fn concat_part(&mut self, out: &str) -> Result<(), StageError> {
        {
            let parts: Vec<Artifact> = self.parts(out)?.into_iter().cloned().collect();
            let w = self.output(out)?;
            if let Some(first) = parts.iter().find(|a| a.table_files().next().is_some()) {
                w.write_like(first)?;
            }
            let mut meta: BTreeMap<&String, (&serde_json::Value, usize)> = BTreeMap::new();
            for (q, a) in parts.iter().enumerate() {
                if a.manifest.files.iter().any(|f| f.format == Format::File) {
                    return Err(StageError::msg(format!(
                        "`{out}` holds plain files, which parts cannot be joined by; its kind \
                         must combine them itself"
                    )));
                }
                for (k, v) in &a.manifest.meta {
                    match meta.get(k) {
                        Some((seen, p)) if *seen != v => {
                            return Err(StageError::msg(format!(
                                "part {q} of `{out}` says {k} = {v}, part {p} {seen}: the parts \
                                 come from different computations"
                            )))
                        }
                        Some(_) => {}
                        None => {
                            meta.insert(k, (v, q));
                        }
                    }
                }
                for b in a.batches() {
                    self.check_cancelled()?;
                    self.output(out)?.write(&b?)?;
                }
            }
            let w = self.output(out)?;
            for (k, (v, _)) in meta {
                w.set_meta(k, v.clone());
            }
        }
        Ok(())
    }
    /// A top-level section this kind reads ([`crate::Stage::SECTIONS`], or a global one).
    pub fn section<T: Section>(&self, name: &str) -> Result<&T, StageError> {
        section::get(&self.sections, name).ok_or_else(|| {
            StageError::msg(format!(
                "this stage needs the pipeline's `{name}:` (as {})",
                std::any::type_name::<T>()
            ))
        })
    }
    /// The pipeline file's folder: relative paths in params resolve against it.
    pub fn base_dir(&self) -> &std::path::Path {
        &self.base_dir
    }
    /// A progress bar for this stage (hidden under `--quiet` or without a terminal).
    pub fn progress(&self) -> &ProgressBar {
        &self.progress
    }

    pub fn is_cancelled(&self) -> bool {
        matches!(
            self.cancel.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Long computations call this now and then so a failure elsewhere stops them promptly.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The next item of a stream input; `None` once its producer has finished.
    pub fn recv(&mut self, port: &str) -> Result<Option<Item>, StageError> {
        let cancel = self.cancel.clone();
        let s = self
            .streams_in
            .get_mut(port)
            .ok_or_else(|| StageError::msg(format!("no stream input `{port}`")))?;
        if s.ended {
            return Ok(None);
        }
        let msg = select! {
            recv(s.rx) -> m => m,
            recv(cancel) -> _ => return Err(StageError::Cancelled),
        };
        match msg {
            Ok(Msg::Item(i)) => Ok(Some(i)),
            Ok(Msg::End) => {
                s.ended = true;
                Ok(None)
            }
            Err(_) => Err(StageError::UpstreamFailed(s.producer.clone())),
        }
    }

    /// Like `recv`, downcast to the type the producer sends.
    pub fn recv_as<T: Any + Send + Sync>(
        &mut self,
        port: &str,
    ) -> Result<Option<Arc<T>>, StageError> {
        match self.recv(port)? {
            None => Ok(None),
            Some(item) => item.downcast::<T>().map(Some).map_err(|_| {
                StageError::msg(format!(
                    "stream input `{port}` carried an item that is not a {}",
                    std::any::type_name::<T>()
                ))
            }),
        }
    }

    /// The next item of a typed stream input; `None` once its producer has finished.
    pub fn recv_from<T: Any + Send + Sync>(
        &mut self,
        port: &StreamPort<T>,
    ) -> Result<Option<Arc<T>>, StageError> {
        self.recv_as::<T>(port.name)
    }

    /// Sends an item to a typed stream output (see [`Context::send`]).
    pub fn send_to<T: Any + Send + Sync>(
        &mut self,
        port: &StreamPort<T>,
        value: T,
    ) -> Result<(), StageError> {
        self.send(port.name, value)
    }

    /// The next item from whichever stream input has one (fan-in without ordering
    /// deadlocks); `None` once every stream input has ended.
    pub fn recv_any(&mut self) -> Result<Option<(String, Item)>, StageError> {
        loop {
            // Clones of the receivers, so the selection does not borrow `self`.
            let open: Vec<(String, Receiver<Msg>)> = self
                .streams_in
                .iter()
                .filter(|(_, s)| !s.ended)
                .map(|(p, s)| (p.clone(), s.rx.clone()))
                .collect();
            if open.is_empty() {
                return Ok(None);
            }
            let mut sel = crossbeam_channel::Select::new();
            for (_, rx) in &open {
                sel.recv(rx);
            }
            let cancel_idx = sel.recv(&self.cancel);
            let op = sel.select();
            let idx = op.index();
            if idx == cancel_idx {
                let _ = op.recv(&self.cancel);
                return Err(StageError::Cancelled);
            }
            let (port, rx) = &open[idx];
            let msg = op.recv(rx);
            let s = self.streams_in.get_mut(port).expect("port listed above");
            match msg {
                Ok(Msg::Item(i)) => return Ok(Some((port.clone(), i))),
                Ok(Msg::End) => s.ended = true,
                Err(_) => return Err(StageError::UpstreamFailed(s.producer.clone())),
            }
        }
    }

    /// Sends an item to every running consumer of a stream output, blocking while their
    /// channels are full (back-pressure).
    pub fn send<T: Any + Send + Sync>(&mut self, port: &str, value: T) -> Result<(), StageError> {
        self.send_item(port, Arc::new(value))
    }

    pub fn send_item(&mut self, port: &str, item: Item) -> Result<(), StageError> {
        // A producer whose consumers have all gone still stops when the run is cancelled.
        self.check_cancelled()?;
        let cancel = self.cancel.clone();
        let out = self
            .streams_out
            .get_mut(port)
            .ok_or_else(|| StageError::msg(format!("no stream output `{port}`")))?;
        let mut gone = Vec::new();
        for (i, (_, tx)) in out.consumers.iter().enumerate() {
            select! {
                send(tx, Msg::Item(item.clone())) -> r => if r.is_err() { gone.push(i) },
                recv(cancel) -> _ => return Err(StageError::Cancelled),
            }
        }
        // A consumer that returned without reading everything needs no more items.
        for i in gone.into_iter().rev() {
            out.consumers.remove(i);
        }
        Ok(())
    }

    /// Whether a stream output has anyone reading it (sending to none is a no-op, but
    /// preparing the item may cost).
    pub fn has_consumers(&self, port: &str) -> bool {
        self.streams_out
            .get(port)
            .is_some_and(|o| !o.consumers.is_empty())
    }

    /// Whether an optional input is connected.
    pub fn has_input(&self, port: &str) -> bool {
        self.artifacts_in.contains_key(port) || self.streams_in.contains_key(port)
    }

    /// A committed artifact input.
    pub fn input(&self, port: &str) -> Result<&Artifact, StageError> {
        self.artifacts_in
            .get(port)
            .ok_or_else(|| StageError::msg(format!("no artifact input `{port}` is connected")))
    }

    /// The writer of an artifact output; it is committed only if `run` returns `Ok`.
    pub fn output(&mut self, port: &str) -> Result<&mut ArtifactWriter, StageError> {
        self.writers
            .get_mut(port)
            .ok_or_else(|| StageError::msg(format!("no artifact output `{port}`")))
    }

    /// Tells consumers that every stream output is complete.
    pub(crate) fn end_streams(&mut self) {
        for out in self.streams_out.values() {
            for (_, tx) in &out.consumers {
                let _ = tx.send(Msg::End);
            }
        }
        self.streams_out.clear();
    }
}
