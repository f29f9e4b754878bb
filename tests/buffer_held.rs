//! A `DeviceBuffer` owns its block: the safe `Allocator::free` cannot free it
//! behind the buffer's back (issue 13, item 1).

use graphalloc::tensor::DeviceBuffer;
use graphalloc::{Allocator, Config, Error};

#[test]
fn free_refuses_the_block_a_live_buffer_holds() {
    let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    let buf = DeviceBuffer::from_slice(&alloc, &[7u32; 1024]).unwrap();
    let p = buf.device_ptr();
    let before = alloc.stats();

    assert_eq!(alloc.free(p), Err(Error::BufferHeld { ptr: p.addr() }));
    assert_eq!(alloc.stats(), before, "a refused free changes nothing");
    assert_eq!(alloc.live_pointers(), 1);

    // The block was not handed to anyone else: a new buffer gets other
    // memory, and the first one still reads what it wrote.
    let other = DeviceBuffer::from_slice(&alloc, &[9u32; 1024]).unwrap();
    assert_ne!(other.device_ptr(), p);
    assert_eq!(buf.to_vec().unwrap(), vec![7u32; 1024]);

    drop(buf); // the buffer frees its own block
    assert_eq!(alloc.live_pointers(), 1);
    assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
    drop(other);
    assert_eq!(alloc.live_pointers(), 0);
}

#[test]
fn a_buffer_block_in_a_pool_is_refused_too() {
    let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    let pool = alloc.create_pool();
    let buf = alloc
        .with_graph_mode(&pool, || DeviceBuffer::<f32>::zeros(&alloc, 256).unwrap())
        .unwrap();
    let p = buf.device_ptr();
    assert_eq!(alloc.free(p), Err(Error::BufferHeld { ptr: p.addr() }));
    assert_eq!(pool.stats().live_blocks, 1);
    drop(buf);
    assert_eq!(pool.stats().live_blocks, 0);
    pool.reset().unwrap();
}

#[test]
fn plain_pointers_still_free_as_before() {
    let alloc = Allocator::new(Config::host(64 << 20)).unwrap();
    let p = alloc.allocate(4096, 512).unwrap();
    alloc.free(p).unwrap();
    assert_eq!(alloc.free(p), Err(Error::DoubleFree { ptr: p.addr() }));
}
