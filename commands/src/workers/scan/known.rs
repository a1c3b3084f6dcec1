//! What the log says a provider holds, kept on disk so that a rescan's memory does not grow with
//! the tree.
//!
//! The owner's file events are replayed once per scan into an external sort keyed by file and log
//! position; folding each file's facts gives its live state, which a second external sort orders by
//! path into an unlinked temporary file. In memory stay only the first path of each block of
//! [`BLOCK`] records, a Bloom filter of the files' contents (for move detection), and, in the
//! scanner, one bit per file. A lookup reads one block with a positioned read.
//!
//! Sorted runs hold at most `run_len` records in memory; temporary files live in the system's
//! temporary folder (`TMPDIR`) and vanish with the process, even when it is killed.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File as TempFile;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;

use chrono::{DateTime, Utc};
use cloudsync_domain::events::{FileDiscovered, guess_mime};
use cloudsync_domain::file::File;
use cloudsync_domain::{Aggregate, DomainEvent, FileId, ProviderId, ProviderPath, UserId};
use uuid::Uuid;

use crate::{CommandError, Commands};

/// Records per block of the path-ordered file: a lookup reads and decodes one block.
const BLOCK: usize = 32;
/// Records an external sort holds in memory before it writes them out as a sorted run.
pub(crate) const RUN_LEN: usize = 16_384;
/// Events read from the log at a time while the known files are replayed.
const REPLAY_PAGE: i64 = 1000;

/// A BLAKE3 checksum as bytes.
pub(crate) type Content = [u8; 32];

pub(crate) fn content(hex: &str) -> Content {
    blake3::Hash::from_hex(hex).map(|h| *h.as_bytes()).unwrap_or_default()
}

/// What the log says about one live file of the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    pub(crate) file_id: FileId,
    pub(crate) version: i64,
    pub(crate) size: u64,
    pub(crate) modified_at: DateTime<Utc>,
    pub(crate) checksum: Content,
    pub(crate) etag: Option<Box<str>>,
}

impl Known {
    fn new(file_id: FileId, version: i64, size: u64, modified_at: DateTime<Utc>, checksum: &str, etag: Option<String>) -> Self {
        Self {
            file_id,
            version,
            size,
            modified_at,
            checksum: content(checksum),
            etag: etag.map(String::into_boxed_str),
        }
    }

    /// The file's aggregate at `path`, from these facts.
    pub(crate) fn aggregate(&self, path: &ProviderPath, provider_id: ProviderId, owner_id: UserId) -> File {
        File::load(&[DomainEvent::FileDiscovered(FileDiscovered {
            file_id: self.file_id,
            provider_id,
            owner_id,
            path: path.clone(),
            size_bytes: self.size,
            modified_at: self.modified_at,
            mime_type: guess_mime(path.as_str()),
            checksum: blake3::Hash::from_bytes(self.checksum).to_hex().to_string(),
            job_id: None,
            etag: self.etag.as_deref().map(str::to_owned),
        })])
    }

    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(self.file_id.as_uuid().as_bytes())?;
        out.write_all(&self.version.to_le_bytes())?;
        out.write_all(&self.size.to_le_bytes())?;
        out.write_all(&self.modified_at.timestamp().to_le_bytes())?;
        out.write_all(&self.modified_at.timestamp_subsec_nanos().to_le_bytes())?;
        out.write_all(&self.checksum)?;
        match &self.etag {
            Some(etag) => write_str(out, etag),
            None => out.write_all(&u32::MAX.to_le_bytes()),
        }
    }

    fn read(input: &mut impl Read) -> io::Result<Self> {
        let file_id = FileId::from_uuid(Uuid::from_bytes(read_array(input)?));
        let version = i64::from_le_bytes(read_array(input)?);
        let size = u64::from_le_bytes(read_array(input)?);
        let seconds = i64::from_le_bytes(read_array(input)?);
        let nanos = u32::from_le_bytes(read_array(input)?);
        let modified_at = DateTime::from_timestamp(seconds, nanos).ok_or_else(|| corrupt("timestamp out of range"))?;
        let checksum = read_array(input)?;
        let etag = match u32::from_le_bytes(read_array(input)?) {
            u32::MAX => None,
            len => Some(read_string(input, len)?.into_boxed_str()),
        };
        Ok(Self {
            file_id,
            version,
            size,
            modified_at,
            checksum,
            etag,
        })
    }
}

/// A record an external sort can write out and read back.
pub(crate) trait Record: Ord + Sized {
    fn write(&self, out: &mut impl Write) -> io::Result<()>;
    /// The next record, or `None` at the end of the input.
    fn read(input: &mut impl Read) -> io::Result<Option<Self>>;
}

/// An external merge sort: records are sorted in memory `run_len` at a time, written out as
/// sorted runs, and merged when read back.
pub(crate) struct Sorter<T> {
    run: Vec<T>,
    runs: Vec<TempFile>,
    run_len: usize,
    len: usize,
}

impl<T: Record> Sorter<T> {
    pub(crate) fn new(run_len: usize) -> Self {
        Self {
            run: Vec::new(),
            runs: Vec::new(),
            run_len: run_len.max(1),
            len: 0,
        }
    }

    /// How many records were pushed.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn push(&mut self, record: T) -> io::Result<()> {
        self.len += 1;
        self.run.push(record);
        if self.run.len() >= self.run_len { self.spill() } else { Ok(()) }
    }

    fn spill(&mut self) -> io::Result<()> {
        self.run.sort_unstable();
        let mut out = BufWriter::new(tempfile::tempfile()?);
        for record in self.run.drain(..) {
            record.write(&mut out)?;
        }
        let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.rewind()?;
        self.runs.push(file);
        Ok(())
    }

    /// Every record pushed, in order.
    pub(crate) fn finish(mut self) -> io::Result<Sorted<T>> {
        if self.runs.is_empty() {
            self.run.sort_unstable();
            return Ok(Sorted::Memory(self.run.into_iter()));
        }
        if !self.run.is_empty() {
            self.spill()?;
        }
        let mut readers: Vec<_> = self.runs.into_iter().map(BufReader::new).collect();
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (run, reader) in readers.iter_mut().enumerate() {
            if let Some(record) = T::read(reader)? {
                heap.push(Reverse(Head { record, run }));
            }
        }
        Ok(Sorted::Merge { readers, heap })
    }
}

/// The next record of one sorted run.
pub(crate) struct Head<T> {
    record: T,
    run: usize,
}

impl<T: Ord> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T: Ord> Eq for Head<T> {}
impl<T: Ord> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: Ord> Ord for Head<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.record.cmp(&other.record).then(self.run.cmp(&other.run))
    }
}

/// The records of a [`Sorter`], in order.
pub(crate) enum Sorted<T> {
    Memory(std::vec::IntoIter<T>),
    Merge {
        readers: Vec<BufReader<TempFile>>,
        heap: BinaryHeap<Reverse<Head<T>>>,
    },
}

impl<T: Record> Iterator for Sorted<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(records) => records.next().map(Ok),
            Sorted::Merge { readers, heap } => {
                let Reverse(Head { record, run }) = heap.pop()?;
                match T::read(&mut readers[run]) {
                    Ok(Some(next)) => heap.push(Reverse(Head { record: next, run })),
                    Ok(None) => {}
                    Err(err) => return Some(Err(err)),
                }
                Some(Ok(record))
            }
        }
    }
}

/// One file event of the provider, keyed by file and log position.
#[derive(Debug, Clone)]
struct Fact {
    file_id: Uuid,
    position: i64,
    change: Change,
}

#[derive(Debug, Clone)]
enum Change {
    Discovered { path: String, known: Known },
    Moved { to: String, version: i64 },
    Changed(Known),
    Gone,
}

impl PartialEq for Fact {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Fact {}
impl PartialOrd for Fact {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Fact {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.file_id, self.position).cmp(&(other.file_id, other.position))
    }
}

impl Record for Fact {
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(self.file_id.as_bytes())?;
        out.write_all(&self.position.to_le_bytes())?;
        match &self.change {
            Change::Discovered { path, known } => {
                out.write_all(&[0])?;
                write_str(out, path)?;
                known.write(out)
            }
            Change::Moved { to, version } => {
                out.write_all(&[1])?;
                write_str(out, to)?;
                out.write_all(&version.to_le_bytes())
            }
            Change::Changed(known) => {
                out.write_all(&[2])?;
                known.write(out)
            }
            Change::Gone => out.write_all(&[3]),
        }
    }

    fn read(input: &mut impl Read) -> io::Result<Option<Self>> {
        let Some(file_id) = read_first(input)? else { return Ok(None) };
        let position = i64::from_le_bytes(read_array(input)?);
        let change = match read_array::<1>(input)?[0] {
            0 => {
                let path = read_len_string(input)?;
                Change::Discovered {
                    path,
                    known: Known::read(input)?,
                }
            }
            1 => {
                let to = read_len_string(input)?;
                Change::Moved {
                    to,
                    version: i64::from_le_bytes(read_array(input)?),
                }
            }
            2 => Change::Changed(Known::read(input)?),
            3 => Change::Gone,
            _ => return Err(corrupt("unknown fact")),
        };
        Ok(Some(Fact {
            file_id: Uuid::from_bytes(file_id),
            position,
            change,
        }))
    }
}

/// A live file and its path: the path-ordered records.
#[derive(Debug, PartialEq, Eq)]
struct Placed {
    path: String,
    known: Known,
}

impl PartialOrd for Placed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Placed {
    fn cmp(&self, other: &Self) -> Ordering {
        self.path.cmp(&other.path)
    }
}

impl Record for Placed {
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        write_str(out, &self.path)?;
        self.known.write(out)
    }

    fn read(input: &mut impl Read) -> io::Result<Option<Self>> {
        let Some(len) = read_first::<4>(input)? else { return Ok(None) };
        let path = read_string(input, u32::from_le_bytes(len))?;
        Ok(Some(Placed {
            path,
            known: Known::read(input)?,
        }))
    }
}

/// The first path of a block of the path-ordered file, and where the block lies.
struct Block {
    first: Box<str>,
    offset: u64,
    len: usize,
    ordinal: usize,
}

/// A provider's live files according to the log, ordered by path on disk. Each file has an
/// ordinal, its rank in path order, so that a scan can mark the files it saw in a bitmap.
pub(crate) struct KnownFiles {
    file: TempFile,
    blocks: Vec<Block>,
    len: usize,
    contents: Bloom,
}

impl KnownFiles {
    /// Replays the owner's events into the provider's live files.
    pub(crate) async fn load(commands: &Commands, owner: UserId, provider: ProviderId, run_len: usize) -> Result<Self, CommandError> {
        let mut facts = Sorter::new(run_len);
        let mut after = 0;
        loop {
            let page = commands.store().read_by_actor(owner.as_uuid(), after, REPLAY_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for recorded in &page {
                if !recorded.event_type.starts_with("File") {
                    continue;
                }
                let event = DomainEvent::decode(&recorded.event_type, recorded.schema_version, &recorded.payload)?;
                let version = recorded.stream_version;
                let (file_id, change) = match event {
                    DomainEvent::FileDiscovered(e) if e.provider_id == provider => {
                        let known = Known::new(e.file_id, version, e.size_bytes, e.modified_at, &e.checksum, e.etag);
                        (
                            e.file_id,
                            Change::Discovered {
                                path: e.path.as_str().to_owned(),
                                known,
                            },
                        )
                    }
                    DomainEvent::FileMoved(e) if e.provider_id == provider => (
                        e.file_id,
                        Change::Moved {
                            to: e.to.as_str().to_owned(),
                            version,
                        },
                    ),
                    DomainEvent::FileChanged(e) if e.provider_id == provider => (
                        e.file_id,
                        Change::Changed(Known::new(e.file_id, version, e.size_bytes, e.modified_at, &e.checksum, e.etag)),
                    ),
                    DomainEvent::FileDeleted(e) if e.provider_id == provider => (e.file_id, Change::Gone),
                    DomainEvent::FileRemoved(e) if e.provider_id == provider => (e.file_id, Change::Gone),
                    _ => continue,
                };
                facts.push(Fact {
                    file_id: file_id.as_uuid(),
                    position: recorded.position,
                    change,
                })?;
            }
        }
        Ok(Self::build(facts.finish()?, run_len)?)
    }

    /// Folds each file's facts (in log order) into its live state and orders the live files by path.
    fn build(facts: impl Iterator<Item = io::Result<Fact>>, run_len: usize) -> io::Result<Self> {
        let mut placed = Sorter::new(run_len);
        let mut current: Option<(Uuid, Option<Placed>)> = None;
        for fact in facts {
            let fact = fact?;
            let state = match &mut current {
                Some((id, state)) if *id == fact.file_id => state,
                _ => {
                    if let Some((_, Some(live))) = current.take() {
                        placed.push(live)?;
                    }
                    &mut current.insert((fact.file_id, None)).1
                }
            };
            match fact.change {
                Change::Discovered { path, known } => *state = Some(Placed { path, known }),
                Change::Moved { to, version } => {
                    if let Some(live) = state {
                        live.path = to;
                        live.known.version = version;
                    }
                }
                Change::Changed(known) => {
                    if let Some(live) = state {
                        live.known = known;
                    }
                }
                Change::Gone => *state = None,
            }
        }
        if let Some((_, Some(live))) = current {
            placed.push(live)?;
        }
        let count = placed.len();
        Self::write(placed.finish()?, count)
    }

    /// Writes `count` path-ordered records into blocks, remembering each block's first path and
    /// each file's content.
    fn write(placed: impl Iterator<Item = io::Result<Placed>>, count: usize) -> io::Result<Self> {
        let mut out = BufWriter::new(tempfile::tempfile()?);
        let mut blocks: Vec<Block> = Vec::new();
        let mut contents = Bloom::new(count);
        let (mut offset, mut len) = (0_u64, 0_usize);
        let mut buffer = Vec::new();
        for record in placed {
            let record = record?;
            if len % BLOCK == 0 {
                if let Some(block) = blocks.last_mut() {
                    block.len = buffer.len();
                    offset += buffer.len() as u64;
                    out.write_all(&buffer)?;
                    buffer.clear();
                }
                blocks.push(Block {
                    first: record.path.as_str().into(),
                    offset,
                    len: 0,
                    ordinal: len,
                });
            }
            record.write(&mut buffer)?;
            contents.insert(&record.known.checksum, record.known.size);
            len += 1;
        }
        if let Some(block) = blocks.last_mut() {
            block.len = buffer.len();
            out.write_all(&buffer)?;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(Self {
            file,
            blocks,
            len,
            contents,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The file at `path`, with its ordinal.
    pub(crate) fn get(&self, path: &str) -> io::Result<Option<(usize, Known)>> {
        let index = self.blocks.partition_point(|b| &*b.first <= path);
        let Some(block) = index.checked_sub(1).and_then(|i| self.blocks.get(i)) else {
            return Ok(None);
        };
        let mut bytes = vec![0; block.len];
        self.file.read_exact_at(&mut bytes, block.offset)?;
        let mut input = bytes.as_slice();
        let mut ordinal = block.ordinal;
        while let Some(record) = Placed::read(&mut input)? {
            match record.path.as_str().cmp(path) {
                Ordering::Less => ordinal += 1,
                Ordering::Equal => return Ok(Some((ordinal, record.known))),
                Ordering::Greater => break,
            }
        }
        Ok(None)
    }

    /// Whether some known file may have this content (a Bloom filter: no false negatives).
    pub(crate) fn may_hold(&self, checksum: &Content, size: u64) -> bool {
        self.contents.contains(checksum, size)
    }

    /// Every known file in path order, with its ordinal and path (unparsed: the log's paths are valid).
    pub(crate) fn iter(&self) -> io::Result<impl Iterator<Item = io::Result<(usize, String, Known)>> + use<>> {
        let mut file = self.file.try_clone()?;
        file.rewind()?;
        let mut input = BufReader::new(file);
        let mut ordinal = 0;
        Ok(std::iter::from_fn(move || match Placed::read(&mut input) {
            Ok(Some(record)) => {
                ordinal += 1;
                Some(Ok((ordinal - 1, record.path, record.known)))
            }
            Ok(None) => None,
            Err(err) => Some(Err(err)),
        }))
    }
}

/// A Bloom filter of (content, size), about 1% false positives. BLAKE3 checksums are uniformly
/// distributed, so their bytes serve as the filter's hashes.
struct Bloom {
    bits: Vec<u64>,
}

impl Bloom {
    fn new(items: usize) -> Self {
        Self {
            bits: vec![0; (items * 10).div_ceil(64).max(1)],
        }
    }

    fn positions(&self, checksum: &Content, size: u64) -> impl Iterator<Item = usize> + use<> {
        let len = (self.bits.len() * 64) as u64;
        let words: [u64; 4] = std::array::from_fn(|i| {
            let mut word = [0; 8];
            word.copy_from_slice(&checksum[i * 8..i * 8 + 8]);
            u64::from_le_bytes(word) ^ size.rotate_left(16 * i as u32)
        });
        words.into_iter().map(move |w| usize::try_from(w % len).unwrap_or_default())
    }

    fn insert(&mut self, checksum: &Content, size: u64) {
        for bit in self.positions(checksum, size) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn contains(&self, checksum: &Content, size: u64) -> bool {
        self.positions(checksum, size)
            .all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

/// One bit per known file: the files a scan has seen.
pub(crate) struct Marks(Vec<u64>);

impl Marks {
    pub(crate) fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    pub(crate) fn set(&mut self, ordinal: usize) {
        self.0[ordinal / 64] |= 1 << (ordinal % 64);
    }

    pub(crate) fn get(&self, ordinal: usize) -> bool {
        self.0[ordinal / 64] & (1 << (ordinal % 64)) != 0
    }
}

fn write_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    let len = u32::try_from(s.len()).map_err(|_| corrupt("string longer than 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn read_array<const N: usize>(input: &mut impl Read) -> io::Result<[u8; N]> {
    let mut bytes = [0; N];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The first field of a record, or `None` at a clean end of the input.
fn read_first<const N: usize>(input: &mut impl Read) -> io::Result<Option<[u8; N]>> {
    let mut bytes = [0; N];
    let mut filled = 0;
    while filled < N {
        match input.read(&mut bytes[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Some(bytes))
}

fn read_len_string(input: &mut impl Read) -> io::Result<String> {
    let len = u32::from_le_bytes(read_array(input)?);
    read_string(input, len)
}

fn read_string(input: &mut impl Read, len: u32) -> io::Result<String> {
    let mut bytes = vec![0; len as usize];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| corrupt("path is not UTF-8"))
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("scan index: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Number(u64);

    impl Record for Number {
        fn write(&self, out: &mut impl Write) -> io::Result<()> {
            out.write_all(&self.0.to_le_bytes())
        }
        fn read(input: &mut impl Read) -> io::Result<Option<Self>> {
            Ok(read_first(input)?.map(|bytes| Number(u64::from_le_bytes(bytes))))
        }
    }

    fn numbers(run_len: usize, input: &[u64]) -> Vec<u64> {
        let mut sorter = Sorter::new(run_len);
        for n in input {
            sorter.push(Number(*n)).expect("push");
        }
        sorter.finish().expect("finish").map(|n| n.expect("read").0).collect()
    }

    #[test]
    fn external_sort_merges_runs_in_order() {
        // A scrambled sequence with duplicates, sorted in memory and through 1, 2, 7 and 1000 runs.
        let input: Vec<u64> = (0..1000_u64).map(|i| (i * 7919) % 613).collect();
        let mut expected = input.clone();
        expected.sort_unstable();
        for run_len in [1, 3, 150, 999, 1000, 5000] {
            assert_eq!(numbers(run_len, &input), expected, "run length {run_len}");
        }
        assert!(numbers(4, &[]).is_empty());
    }

    fn known(n: u64, version: i64) -> Known {
        let checksum = *blake3::hash(&n.to_le_bytes()).as_bytes();
        Known {
            file_id: FileId::from_uuid(Uuid::from_u64_pair(0, n)),
            version,
            size: n,
            modified_at: DateTime::from_timestamp(1_700_000_000 + i64::try_from(n).unwrap_or_default(), 500).unwrap_or_default(),
            checksum,
            etag: n.is_multiple_of(2).then(|| format!("\"etag-{n}\"").into_boxed_str()),
        }
    }

    fn fact(n: u64, position: i64, change: Change) -> Fact {
        Fact {
            file_id: Uuid::from_u64_pair(0, n),
            position,
            change,
        }
    }

    #[test]
    fn files_fold_from_their_facts_and_are_found_by_path() {
        // 200 files discovered; every third moved; every fifth changed; every seventh removed.
        let mut facts = Vec::new();
        let mut position = 0;
        let mut next = || {
            position += 1;
            position
        };
        let mut expected = std::collections::BTreeMap::new();
        for n in 0..200_u64 {
            let path = format!("dir {}/file-{n}.txt", n % 9);
            facts.push(fact(
                n,
                next(),
                Change::Discovered {
                    path: path.clone(),
                    known: known(n, 1),
                },
            ));
            let mut live = Some((path, known(n, 1)));
            if n % 3 == 0 {
                let to = format!("moved/ünïcode {n}");
                facts.push(fact(
                    n,
                    next(),
                    Change::Moved {
                        to: to.clone(),
                        version: 2,
                    },
                ));
                live = live.map(|(_, mut k)| {
                    k.version = 2;
                    (to, k)
                });
            }
            if n % 5 == 0 {
                let changed = Known {
                    file_id: known(n, 0).file_id,
                    ..known(n + 1000, 3)
                };
                facts.push(fact(n, next(), Change::Changed(changed.clone())));
                live = live.map(|(path, _)| (path, changed));
            }
            if n % 7 == 0 {
                facts.push(fact(n, next(), Change::Gone));
                live = None;
            }
            if let Some((path, k)) = live {
                expected.insert(path, k);
            }
        }
        // Facts reach the sorter in log order, interleaved across files.
        facts.sort_by_key(|f| (f.position % 17, f.position));
        for run_len in [4, 50, 10_000] {
            let mut sorter = Sorter::new(run_len);
            for f in facts.iter() {
                sorter.push(f.clone()).expect("push");
            }
            let files = KnownFiles::build(sorter.finish().expect("sorted"), run_len).expect("built");
            assert_eq!(files.len(), expected.len());
            let listed: Vec<(usize, String, Known)> = files.iter().expect("iter").map(|r| r.expect("record")).collect();
            let want: Vec<(usize, String, Known)> = expected.iter().enumerate().map(|(i, (p, k))| (i, p.clone(), k.clone())).collect();
            assert_eq!(listed, want, "run length {run_len}");
            for (ordinal, path, k) in &want {
                assert_eq!(files.get(path).expect("get"), Some((*ordinal, k.clone())), "{path}");
                assert!(files.may_hold(&k.checksum, k.size));
            }
            for absent in [
                "",
                "a",
                "dir 0/file-0.txt",
                "dir 1/file-1.txt ",
                "zzz",
                "moved/ünïcode 0",
                "moved/ünïcode 7",
            ] {
                assert_eq!(files.get(absent).expect("get"), None, "{absent}");
            }
            let false_positives = (5000..15_000_u64).filter(|n| files.may_hold(&known(*n, 1).checksum, *n)).count();
            assert!(false_positives < 300, "{false_positives} false positives in 10,000");
        }
    }

    #[test]
    fn marks_remember_each_ordinal() {
        let mut marks = Marks::new(130);
        for i in [0, 63, 64, 129] {
            marks.set(i);
        }
        let set: Vec<usize> = (0..130).filter(|i| marks.get(*i)).collect();
        assert_eq!(set, vec![0, 63, 64, 129]);
    }
}
