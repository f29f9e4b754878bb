//! Reading an arena's segments and blocks whole, for snapshots (slow: walks
//! every block; never on the allocation path).

use super::{Arena, Class, StreamTag};
use std::collections::HashSet;

/// What a block is, as a snapshot tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalkState {
    /// Handed out and not freed.
    Live,
    /// Freed, waiting for stream work before it is reused.
    Pending,
    /// Free, with memory behind it.
    Free,
    /// Free and unmapped (an expandable segment's address space only).
    Unmapped,
}

/// One block of a walked segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalkedBlock {
    pub(crate) addr: u64,
    pub(crate) size: usize,
    pub(crate) state: WalkState,
}

/// One segment with its blocks, in address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalkedSegment {
    pub(crate) base: u64,
    pub(crate) size: usize,
    pub(crate) stream: StreamTag,
    pub(crate) small: bool,
    pub(crate) expandable: bool,
    pub(crate) blocks: Vec<WalkedBlock>,
}

impl Arena {
    /// The size of a block and the stream of its segment.
    pub(crate) fn block_info(&self, block: super::BlockRef) -> (usize, StreamTag) {
        let b = &self.blocks[block.slot as usize];
        (b.size, self.segments[b.segment as usize].stream)
    }

    /// Every segment with its blocks.
    pub(crate) fn walk(&self) -> Vec<WalkedSegment> {
        let deferred: HashSet<u32> = self.deferred.iter().map(|d| d.block.slot).collect();
        let mut out: Vec<WalkedSegment> = self
            .segments
            .iter()
            .map(|(_, seg)| {
                let mut blocks = Vec::new();
                let mut slot = Some(seg.head);
                while let Some(s) = slot {
                    let b = &self.blocks[s as usize];
                    let state = if !b.mapped {
                        WalkState::Unmapped
                    } else if !b.allocated || self.is_quick(s) {
                        WalkState::Free
                    } else if deferred.contains(&s) {
                        WalkState::Pending
                    } else {
                        WalkState::Live
                    };
                    blocks.push(WalkedBlock {
                        addr: b.addr,
                        size: b.size,
                        state,
                    });
                    slot = b.next;
                }
                WalkedSegment {
                    base: seg.base,
                    size: seg.size,
                    stream: seg.stream,
                    small: seg.class == Class::Small,
                    expandable: seg.pages.is_some(),
                    blocks,
                }
            })
            .collect();
        out.sort_by_key(|s| s.base);
        out
    }
}
