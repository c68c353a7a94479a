//! Artifact files: how a stage writes an output and how a consumer reads it back.
//!
//! Tables are Parquet by default: compressed, column-pruned on read, and opened as they are
//! by Python Polars. Arrow IPC (`Format::Ipc`) is offered for large dense tables that picie
//! itself writes once and streams back whole (feature dumps): no encoding or compression
//! cost on either side, and batches come back in the order and size they were written.
//! Anything else (a safetensors checkpoint) is a plain file of the artifact.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::StageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Ipc,
    File,
}

/// One file of an artifact as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub format: Format,
    pub bytes: u64,
    pub rows: u64,
    pub blake3: String,
}

impl FileEntry {
    /// What is wrong with a copy of this file of `len` bytes whose BLAKE3 is `blake3`
    /// (`None`: not computed yet, so only the size is checked), as the messages of every
    /// verification say it.
    pub(crate) fn check(&self, len: u64, blake3: Option<&str>) -> Result<(), String> {
        if len != self.bytes {
            return Err(format!(
                "{} is {len} bytes, the manifest says {}",
                self.name, self.bytes
            ));
        }
        match blake3 {
            Some(sum) if sum != self.blake3 => {
                Err(format!("{} does not match its checksum", self.name))
            }
            _ => Ok(()),
        }
    }
}

/// `manifest.json` of a committed artifact.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub key: String,
    pub node: String,
    pub kind: String,
    pub output: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub epoch: Option<u32>,
    pub files: Vec<FileEntry>,
    pub rows: u64,
    /// Field names and Arrow types of table artifacts.
    pub schema: Vec<(String, String)>,
    /// Small stage-defined facts (cluster count, feature dimension, ...).
    pub meta: BTreeMap<String, serde_json::Value>,
    pub wall_time_s: f64,
    pub created: String,
    pub picie_version: String,
    /// Everything the key was computed from.
    pub provenance: serde_json::Value,
}

/// Rows per Parquet/IPC part file; bounds memory of writers and readers alike.
pub const DEFAULT_PART_ROWS: usize = 1 << 20;

enum TableWriter {
    Parquet(ArrowWriter<File>),
    Ipc(arrow_ipc::writer::FileWriter<BufWriter<File>>),
}

/// Writes one artifact output into a private temporary folder; the engine commits it
/// (checksums, manifest, atomic rename) only when the stage succeeds.
pub struct ArtifactWriter {
    pub(crate) dir: PathBuf,
    format: Format,
    compress: bool,
    part_rows: usize,
    schema: Option<SchemaRef>,
    current: Option<(String, TableWriter, u64)>,
    pub(crate) files: Vec<(String, Format, u64)>,
    pub(crate) meta: BTreeMap<String, serde_json::Value>,
    parts: usize,
    /// Parquet rows held back until they fill an aligned chunk (see [`PARQUET_ALIGN`]).
    pending: Option<RecordBatch>,
    /// Parquet rows per row group (`None`: the parquet crate's default, about a million).
    row_group_rows: Option<usize>,
}

/// Parquet's column writers cut each `write` call into mini-batches of 1024 values and
/// decide on page breaks between them, so the bytes of a file depend on where the calls
/// split the rows. Handing the writer only chunks that start at multiples of this many rows
/// makes the bytes a function of the rows alone: a table written in parts and joined
/// (sharded passes) is byte for byte the table written at once.
pub const PARQUET_ALIGN: usize = 1024;

impl ArtifactWriter {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            format: Format::Parquet,
            compress: true,
            part_rows: DEFAULT_PART_ROWS,
            schema: None,
            current: None,
            files: Vec::new(),
            meta: BTreeMap::new(),
            parts: 0,
            pending: None,
            row_group_rows: None,
        }
    }

    /// Parquet row groups of `rows` rows (rounded up to [`PARQUET_ALIGN`]): the table's
    /// chunks ([`Artifact::chunks`]), which sharded passes split. Recorded in the manifest
    /// (`row_group_rows`) so that parts joined ([`Self::write_like`]) are cut the same way;
    /// call before the first `write`.
    pub fn set_row_group_rows(&mut self, rows: usize) -> &mut Self {
        let rows = rows.max(1).div_ceil(PARQUET_ALIGN) * PARQUET_ALIGN;
        self.row_group_rows = Some(rows);
        self.set_meta("row_group_rows", rows);
        self
    }

    /// Tables as Arrow IPC instead of Parquet; call before the first `write`.
    pub fn use_ipc(&mut self) -> &mut Self {
        self.format = Format::Ipc;
        self
    }

    /// Parquet pages without compression: for dense floats (features), which zstd shrinks
    /// by only ~9 % while costing 1.7x the write and read time.
    pub fn uncompressed(&mut self) -> &mut Self {
        self.compress = false;
        self
    }

    pub fn set_part_rows(&mut self, rows: usize) -> &mut Self {
        self.part_rows = rows.max(1);
        self
    }

    /// Records a small fact in the manifest.
    pub fn set_meta(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.meta.insert(key.to_string(), value.into());
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.2).sum::<u64>()
            + self.current.as_ref().map_or(0, |c| c.2)
            + self.pending.as_ref().map_or(0, |p| p.num_rows() as u64)
    }

    /// Writes tables as `a`'s are written: its format, and for Parquet its compression.
    pub fn write_like(&mut self, a: &Artifact) -> Result<(), StageError> {
        let Some((path, format)) = a.table_files().next() else {
            return Ok(());
        };
        if format == Format::Ipc {
            self.use_ipc();
            return Ok(());
        }
        if let Some(rows) = a.meta("row_group_rows").and_then(|v| v.as_u64()) {
            self.set_row_group_rows(rows as usize);
        }
        let file = File::open(&path).map_err(|e| StageError::io(&path, e))?;
        let meta = ParquetRecordBatchReaderBuilder::try_new(file)?
            .metadata()
            .clone();
        let plain = meta
            .row_groups()
            .first()
            .and_then(|g| g.columns().first())
            .is_some_and(|c| c.compression() == Compression::UNCOMPRESSED);
        if plain {
            self.uncompressed();
        }
        Ok(())
    }

    /// Appends a batch; every batch of one artifact has the same schema.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), StageError> {
        match &self.schema {
            None => self.schema = Some(batch.schema()),
            Some(s) if s != &batch.schema() => {
                return Err(StageError::msg(format!(
                    "artifact batches must share one schema; got {:?} after {:?}",
                    batch.schema(),
                    s
                )))
            }
            Some(_) => {}
        }
        if self.format == Format::Ipc {
            // IPC keeps each batch as written: readers get the same batches back.
            return self.write_rows(batch);
        }
        let mut batch = batch.clone();
        if let Some(head) = self.pending.take() {
            let take = (PARQUET_ALIGN - head.num_rows()).min(batch.num_rows());
            let joined = arrow_select::concat::concat_batches(
                &batch.schema(),
                [&head, &batch.slice(0, take)],
            )?;
            batch = batch.slice(take, batch.num_rows() - take);
            if joined.num_rows() < PARQUET_ALIGN {
                self.pending = Some(joined);
                return Ok(());
            }
            self.write_rows(&joined)?;
        }
        let whole = batch.num_rows() / PARQUET_ALIGN * PARQUET_ALIGN;
        if whole > 0 {
            self.write_rows(&batch.slice(0, whole))?;
        }
        if whole < batch.num_rows() {
            self.pending = Some(batch.slice(whole, batch.num_rows() - whole));
        }
        Ok(())
    }

    fn write_rows(&mut self, batch: &RecordBatch) -> Result<(), StageError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.open_part()?;
            }
            let (_, w, rows) = self.current.as_mut().expect("opened above");
            let room = self.part_rows - *rows as usize;
            let take = room.min(batch.num_rows() - offset);
            let slice = batch.slice(offset, take);
            match w {
                TableWriter::Parquet(w) => w.write(&slice)?,
                TableWriter::Ipc(w) => w.write(&slice)?,
            }
            *rows += take as u64;
            offset += take;
            if *rows as usize >= self.part_rows {
                self.close_part()?;
            }
        }
        Ok(())
    }

    /// A path inside the artifact for a plain file the stage writes itself.
    pub fn file_path(&mut self, name: &str) -> Result<PathBuf, StageError> {
        if name.is_empty()
            || name.contains('/')
            || name.starts_with('.')
            || name == "manifest.json"
            || self.files.iter().any(|f| f.0 == name)
        {
            return Err(StageError::msg(format!(
                "bad or repeated artifact file name `{name}`"
            )));
        }
        self.files.push((name.to_string(), Format::File, 0));
        Ok(self.dir.join(name))
    }

    fn open_part(&mut self) -> Result<(), StageError> {
        let schema = self.schema.clone().expect("schema set before a part opens");
        let ext = if self.format == Format::Ipc {
            "arrow"
        } else {
            "parquet"
        };
        let name = format!("part-{:05}.{ext}", self.parts);
        self.parts += 1;
        let path = self.dir.join(&name);
        let file = File::create(&path).map_err(|e| StageError::io(&path, e))?;
        let w = match self.format {
            Format::Ipc => TableWriter::Ipc(arrow_ipc::writer::FileWriter::try_new(
                BufWriter::new(file),
                &schema,
            )?),
            _ => {
                let compression = if self.compress {
                    Compression::ZSTD(ZstdLevel::try_new(1)?)
                } else {
                    Compression::UNCOMPRESSED
                };
                let mut props = WriterProperties::builder().set_compression(compression);
                if let Some(rows) = self.row_group_rows {
                    props = props.set_max_row_group_row_count(Some(rows));
                }
                let props = props.build();
                TableWriter::Parquet(ArrowWriter::try_new(file, schema, Some(props))?)
            }
        };
        self.current = Some((name, w, 0));
        Ok(())
    }

    fn close_part(&mut self) -> Result<(), StageError> {
        if let Some((name, w, rows)) = self.current.take() {
            match w {
                TableWriter::Parquet(w) => {
                    w.close()?;
                }
                TableWriter::Ipc(mut w) => {
                    w.finish()?;
                    w.into_inner()?
                        .flush()
                        .map_err(|e| StageError::io(self.dir.join(&name), e))?;
                }
            }
            self.files.push((name, self.format, rows));
        }
        Ok(())
    }

    /// Closes the open part and checks every reserved file exists.
    pub(crate) fn finish(&mut self) -> Result<(), StageError> {
        if let Some(tail) = self.pending.take() {
            self.write_rows(&tail)?;
        }
        self.close_part()?;
        for (name, _, _) in &self.files {
            let p = self.dir.join(name);
            if !p.is_file() {
                return Err(StageError::msg(format!(
                    "the stage reserved artifact file `{name}` but did not write it"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }
}

impl Drop for ArtifactWriter {
    /// An uncommitted artifact leaves nothing behind (after a commit the folder has been
    /// renamed away and this does nothing).
    fn drop(&mut self) {
        self.current = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A committed artifact (checksums verified when it was looked up).
#[derive(Clone, Debug)]
pub struct Artifact {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Artifact {
    pub fn key(&self) -> &str {
        &self.manifest.key
    }

    pub fn meta(&self, key: &str) -> Option<&serde_json::Value> {
        self.manifest.meta.get(key)
    }

    /// The path of a plain file of this artifact.
    pub fn file(&self, name: &str) -> Result<PathBuf, StageError> {
        self.manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .map(|f| self.dir.join(&f.name))
            .ok_or_else(|| {
                StageError::msg(format!(
                    "artifact {} has no file `{name}`",
                    self.manifest.key
                ))
            })
    }

    /// Table files in write order.
    pub fn table_files(&self) -> impl Iterator<Item = (PathBuf, Format)> + '_ {
        self.manifest
            .files
            .iter()
            .filter(|f| f.format != Format::File)
            .map(|f| (self.dir.join(&f.name), f.format))
    }

    /// Streams every batch of a table artifact, part by part.
    pub fn batches(&self) -> impl Iterator<Item = Result<RecordBatch, StageError>> + '_ {
        self.table_files()
            .flat_map(|(path, format)| match open_table(&path, format) {
                Ok(it) => it,
                Err(e) => Box::new(std::iter::once(Err(e))),
            })
    }

    /// [`Self::batches`] owning the artifact, for a reader kept across other borrows.
    pub fn into_batches(self) -> impl Iterator<Item = Result<RecordBatch, StageError>> + Send {
        let files: Vec<(PathBuf, Format)> = self.table_files().collect();
        files
            .into_iter()
            .flat_map(|(path, format)| match open_table(&path, format) {
                Ok(it) => it,
                Err(e) => Box::new(std::iter::once(Err(e))),
            })
    }

    /// How many batches an Arrow IPC artifact holds, as written (from the files' footers);
    /// sharded readers split them ([`crate::shard::Shard::range`]). Parquet tables come
    /// back in reader-sized batches, so they have no count of written batches.
    pub fn ipc_batch_count(&self) -> Result<usize, StageError> {
        let mut n = 0;
        for (path, format) in self.table_files() {
            if format != Format::Ipc {
                return Err(StageError::msg(format!(
                    "artifact {} is not an Arrow IPC table: it has no written batches to count",
                    self.key()
                )));
            }
            let file = File::open(&path).map_err(|e| StageError::io(&path, e))?;
            n += arrow_ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None)?
                .num_batches();
        }
        Ok(n)
    }

    /// The table's chunks, the units a sharded pass splits ([`crate::shard::Shard::range`]):
    /// per file, its Arrow IPC batches as written or its Parquet row groups. Their number
    /// comes from the files' footers; nothing is decoded.
    pub fn chunk_count(&self) -> Result<usize, StageError> {
        let mut n = 0;
        for (path, format) in self.table_files() {
            n += chunks_in(&path, format)?;
        }
        Ok(n)
    }

    /// The batches of chunks `range` ([`Self::chunk_count`]), in order: an IPC batch as
    /// written, a Parquet row group in reader batches of at most 65536 rows (never across
    /// row groups). Reading all of them is one process's pass, cut exactly as a sharded
    /// pass cuts its parts.
    pub fn chunks(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = Result<RecordBatch, StageError>> + '_ {
        let mut start = 0usize;
        self.table_files().flat_map(move |(path, format)| {
            let first = start;
            let n = match chunks_in(&path, format) {
                Ok(n) => n,
                Err(e) => return Box::new(std::iter::once(Err(e))) as BatchIter,
            };
            start += n;
            let lo = range.start.max(first) - first;
            let hi = range.end.min(first + n).saturating_sub(first);
            if lo >= hi {
                return Box::new(std::iter::empty());
            }
            match open_chunks(&path, format, lo..hi) {
                Ok(it) => it,
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        })
    }

    /// All batches (small tables only).
    pub fn read_all(&self) -> Result<Vec<RecordBatch>, StageError> {
        self.batches().collect()
    }
}

type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch, StageError>> + Send>;

/// How many chunks one table file holds (IPC batches, Parquet row groups).
fn chunks_in(path: &Path, format: Format) -> Result<usize, StageError> {
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    Ok(match format {
        Format::Ipc => arrow_ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None)?
            .num_batches(),
        _ => ParquetRecordBatchReaderBuilder::try_new(file)?
            .metadata()
            .num_row_groups(),
    })
}

/// Chunks `range` of one table file (see [`Artifact::chunks`]).
fn open_chunks(
    path: &Path,
    format: Format,
    range: std::ops::Range<usize>,
) -> Result<BatchIter, StageError> {
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    Ok(match format {
        Format::Ipc => {
            let mut r =
                arrow_ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None)?;
            r.set_index(range.start)?;
            Box::new(r.take(range.len()).map(|b| b.map_err(StageError::from)))
        }
        _ => {
            let path = path.to_path_buf();
            // One reader per row group, so that no reader batch spans two of them.
            Box::new(range.flat_map(move |g| {
                let open = || -> Result<BatchIter, StageError> {
                    let file = File::open(&path).map_err(|e| StageError::io(&path, e))?;
                    Ok(Box::new(
                        ParquetRecordBatchReaderBuilder::try_new(file)?
                            .with_row_groups(vec![g])
                            .with_batch_size(65536)
                            .build()?
                            .map(|b| b.map_err(StageError::from)),
                    ))
                };
                open().unwrap_or_else(|e| Box::new(std::iter::once(Err(e))))
            }))
        }
    })
}

fn open_table(path: &Path, format: Format) -> Result<BatchIter, StageError> {
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    Ok(match format {
        Format::Ipc => Box::new(
            arrow_ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None)?
                .map(|b| b.map_err(StageError::from)),
        ),
        _ => Box::new(
            ParquetRecordBatchReaderBuilder::try_new(file)?
                .with_batch_size(65536)
                .build()?
                .map(|b| b.map_err(StageError::from)),
        ),
    })
}
