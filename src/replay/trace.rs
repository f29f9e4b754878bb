//! The trace format: parsing a trace file into [`Event`]s, and writing a
//! [`Trace`] back as text.

use rustc_hash::FxHashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// The longest piece of a bad line that an error quotes.
const QUOTE_MAX: usize = 160;

/// One event of a trace. Blocks are named by dense slots (`0..Trace::allocations()`)
/// in the order the trace allocates them, not by the trace's own IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Allocate `size` bytes on `stream` as block `slot`.
    Alloc {
        /// The block's slot.
        slot: u32,
        /// Bytes requested (never zero).
        size: usize,
        /// The stream tag.
        stream: u64,
    },
    /// Free block `slot`, allocated by an earlier event.
    Free {
        /// The block's slot.
        slot: u32,
    },
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The file could not be opened or read (or is not valid gzip).
    #[error("cannot read trace {}: {source}", path.display())]
    Io {
        /// The file, or `<reader>` when parsing from a reader.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line that is not a comment, a blank line, `a ID SIZE STREAM` or `f ID`.
    #[error("line {line}: {reason}: {text:?}")]
    Malformed {
        /// The 1-based line number.
        line: usize,
        /// The line (without its line break; long lines are cut short).
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `a` line whose ID was already allocated earlier in the trace.
    #[error("line {line}: block id {id} allocated again (first allocated on line {first_line}): {text:?}")]
    DuplicateId {
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// The block ID.
        id: u64,
        /// The line that allocated it first.
        first_line: usize,
    },
    /// An `f` line whose ID was never allocated.
    #[error("line {line}: free of unknown block id {id}: {text:?}")]
    UnknownId {
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// The block ID.
        id: u64,
    },
    /// An `f` line whose block was already freed.
    #[error(
        "line {line}: block id {id} freed again (already freed on line {freed_line}): {text:?}"
    )]
    DoubleFree {
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// The block ID.
        id: u64,
        /// The line that freed it first.
        freed_line: usize,
    },
    /// An `a` line after which the blocks live at once would hold more than
    /// `usize::MAX` bytes.
    #[error(
        "line {line}: the blocks live at once would hold more than {} bytes: {text:?}",
        usize::MAX
    )]
    LiveBytesOverflow {
        /// The 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// More blocks than a replay can index (`u32::MAX`).
    #[error("line {line}: more than {} allocations", u32::MAX)]
    TooManyBlocks {
        /// The 1-based line number.
        line: usize,
    },
    /// The trace has no events at all.
    #[error("trace {name} has no events")]
    Empty {
        /// The trace's name.
        name: String,
    },
}

impl TraceError {
    /// The 1-based line number the error is about, if it is about one line.
    pub fn line(&self) -> Option<usize> {
        match self {
            TraceError::Malformed { line, .. }
            | TraceError::DuplicateId { line, .. }
            | TraceError::UnknownId { line, .. }
            | TraceError::DoubleFree { line, .. }
            | TraceError::LiveBytesOverflow { line, .. }
            | TraceError::TooManyBlocks { line } => Some(*line),
            TraceError::Io { .. } | TraceError::Empty { .. } => None,
        }
    }
}

/// A parsed trace: its events in program order.
///
/// Parsing checks that the trace can be replayed: every ID is allocated once,
/// and freed at most once, after its allocation. Blocks still live at the end
/// are allowed (a recording stops while the program still holds memory).
#[derive(Debug, Clone)]
pub struct Trace {
    name: String,
    events: Vec<Event>,
    /// The trace's own ID of each slot.
    pub(super) ids: Vec<u64>,
    frees: usize,
    peak_requested: usize,
}

/// The state of one block ID while parsing.
struct IdState {
    slot: u32,
    size: usize,
    alloc_line: usize,
    freed_line: Option<usize>,
}

impl Trace {
    /// Reads a trace file, gzip'd or plain text (told apart by the gzip magic
    /// bytes, not by the file name). The trace is named after the file, less
    /// `.gz`, `.trace` and `.txt` endings.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Trace, TraceError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| TraceError::Io {
            path: path.to_owned(),
            source,
        })?;
        Trace::read(&trace_name(path), path, file)
    }

    /// Reads a trace from `reader`, gzip'd or plain text.
    pub fn from_reader(name: &str, reader: impl Read) -> Result<Trace, TraceError> {
        Trace::read(name, Path::new("<reader>"), reader)
    }

    /// Parses a trace held in a string.
    pub fn parse_str(name: &str, text: &str) -> Result<Trace, TraceError> {
        Trace::from_reader(name, text.as_bytes())
    }

    fn read(name: &str, path: &Path, reader: impl Read) -> Result<Trace, TraceError> {
        let io_error = |source| TraceError::Io {
            path: path.to_owned(),
            source,
        };
        let mut buffered = BufReader::with_capacity(1 << 16, reader);
        let head = buffered.fill_buf().map_err(io_error)?;
        if head.starts_with(&[0x1f, 0x8b]) {
            let decoder = flate2::bufread::MultiGzDecoder::new(buffered);
            Trace::parse_lines(name, path, BufReader::with_capacity(1 << 16, decoder))
        } else {
            Trace::parse_lines(name, path, buffered)
        }
    }

    fn parse_lines(name: &str, path: &Path, mut input: impl BufRead) -> Result<Trace, TraceError> {
        let mut events = Vec::new();
        let mut ids = Vec::new();
        let mut states: FxHashMap<u64, IdState> = FxHashMap::default();
        let mut frees = 0;
        let mut live_requested = 0usize;
        let mut peak_requested = 0usize;
        let mut raw = Vec::with_capacity(64);
        let mut line = 0usize;
        loop {
            raw.clear();
            let n = input
                .read_until(b'\n', &mut raw)
                .map_err(|source| TraceError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            line += 1;
            let Ok(text) = std::str::from_utf8(&raw) else {
                return Err(TraceError::Malformed {
                    line,
                    text: quote(&String::from_utf8_lossy(&raw)),
                    reason: "not valid UTF-8".into(),
                });
            };
            let text = text.trim_end_matches(['\n', '\r']);
            let body = text.trim();
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let malformed = |reason: &str| TraceError::Malformed {
                line,
                text: quote(text),
                reason: reason.into(),
            };
            let mut fields = body.split_ascii_whitespace();
            let op = fields.next().expect("a non-blank line has a field");
            let number = |field: Option<&str>, what: &str| -> Result<u64, TraceError> {
                let field = field.ok_or_else(|| malformed(&format!("missing {what}")))?;
                field
                    .parse::<u64>()
                    .map_err(|_| malformed(&format!("{what} {field:?} is not a whole number")))
            };
            match op {
                "a" => {
                    let id = number(fields.next(), "block id")?;
                    let size = number(fields.next(), "size")?;
                    let stream = number(fields.next(), "stream")?;
                    if fields.next().is_some() {
                        return Err(malformed("extra fields after `a ID SIZE STREAM`"));
                    }
                    let size = usize::try_from(size)
                        .ok()
                        .filter(|&s| s > 0)
                        .ok_or_else(|| malformed("size must be positive"))?;
                    let slot =
                        u32::try_from(ids.len()).map_err(|_| TraceError::TooManyBlocks { line })?;
                    if let Some(first) = states.get(&id) {
                        return Err(TraceError::DuplicateId {
                            line,
                            text: quote(text),
                            id,
                            first_line: first.alloc_line,
                        });
                    }
                    // Exact (never saturated), so each free below can take
                    // its block's size back off.
                    live_requested = live_requested.checked_add(size).ok_or_else(|| {
                        TraceError::LiveBytesOverflow {
                            line,
                            text: quote(text),
                        }
                    })?;
                    states.insert(
                        id,
                        IdState {
                            slot,
                            size,
                            alloc_line: line,
                            freed_line: None,
                        },
                    );
                    peak_requested = peak_requested.max(live_requested);
                    ids.push(id);
                    events.push(Event::Alloc { slot, size, stream });
                }
                "f" => {
                    let id = number(fields.next(), "block id")?;
                    if fields.next().is_some() {
                        return Err(malformed("extra fields after `f ID`"));
                    }
                    let Some(state) = states.get_mut(&id) else {
                        return Err(TraceError::UnknownId {
                            line,
                            text: quote(text),
                            id,
                        });
                    };
                    if let Some(freed_line) = state.freed_line {
                        return Err(TraceError::DoubleFree {
                            line,
                            text: quote(text),
                            id,
                            freed_line,
                        });
                    }
                    state.freed_line = Some(line);
                    let slot = state.slot;
                    live_requested -= state.size; // counted in by its `a` line
                    frees += 1;
                    events.push(Event::Free { slot });
                }
                _ => return Err(malformed("expected `a ID SIZE STREAM` or `f ID`")),
            }
        }
        if events.is_empty() {
            return Err(TraceError::Empty { name: name.into() });
        }
        events.shrink_to_fit();
        Ok(Trace {
            name: name.into(),
            events,
            ids,
            frees,
            peak_requested,
        })
    }

    /// Writes the trace as plain text in the format the parser reads: a
    /// `# NAME` comment line, then one `a ID SIZE STREAM` or `f ID` line per
    /// event, with the trace's own IDs. Parsing what it writes gives the same
    /// events.
    ///
    /// ```
    /// use graphalloc::replay::Trace;
    /// let trace = Trace::parse_str("demo", "a 7 4096 0\n\nf 7\n")?;
    /// let mut text = Vec::new();
    /// trace.write_to(&mut text)?;
    /// assert_eq!(String::from_utf8(text)?, "# demo\na 7 4096 0\nf 7\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_to(&self, out: impl Write) -> io::Result<()> {
        let mut out = io::BufWriter::new(out);
        // One comment line, whatever the name holds.
        let name: String = self.name.chars().filter(|c| !c.is_control()).collect();
        writeln!(out, "# {name}")?;
        for event in &self.events {
            match *event {
                Event::Alloc { slot, size, stream } => {
                    writeln!(out, "a {} {size} {stream}", self.ids[slot as usize])?
                }
                Event::Free { slot } => writeln!(out, "f {}", self.ids[slot as usize])?,
            }
        }
        out.flush()
    }

    /// The trace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The events, in program order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Number of events (the lines that are neither comments nor blank).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the trace has no events (never true for a parsed trace).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Number of `a` events, which is also the number of slots.
    pub fn allocations(&self) -> usize {
        self.ids.len()
    }

    /// Number of `f` events.
    pub fn frees(&self) -> usize {
        self.frees
    }

    /// Blocks the trace allocates and never frees.
    pub fn left_live(&self) -> usize {
        self.ids.len() - self.frees
    }

    /// The trace's own ID of a slot.
    pub fn id_of(&self, slot: u32) -> Option<u64> {
        self.ids.get(slot as usize).copied()
    }

    /// The highest sum of requested bytes live at once: what a perfect
    /// allocator with no rounding would have to hold.
    pub fn peak_requested(&self) -> usize {
        self.peak_requested
    }
}

/// `text` cut to [`QUOTE_MAX`] characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A trace's name from its file name: `dir/resnet50_train.trace.gz` →
/// `resnet50_train`.
pub fn trace_name(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    for ending in [".gz", ".txt", ".trace"] {
        if let Some(stem) = name.strip_suffix(ending) {
            if !stem.is_empty() {
                name = stem.to_owned();
            }
        }
    }
    name
}
