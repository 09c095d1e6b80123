//! The memory cap with several linear memories (issue 19, finding 4): a
//! handmade component whose core module declares `n` memories and grows
//! each by 20 MiB in its start function, instantiated in the plugin
//! sandbox's store.

use super::sandbox::MemoryLimitExceeded;
use super::{GuestStderr, PluginRuntime, PluginState};
use crate::config::SandboxConfig;
use crate::keys::SigningGrant;

fn uleb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    uleb(content.len() as u64, out);
    out.extend_from_slice(content);
}

/// A component of one core instance of a module with `memories` memories
/// of one page, each grown by `grow_pages` at start.
fn component(memories: u8, grow_pages: u16) -> Vec<u8> {
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // type 0: [] -> []
    section(3, &[1, 0], &mut module); // func 0: type 0
    let mut mems = vec![memories];
    for _ in 0..memories {
        mems.extend_from_slice(&[0x00, 1]); // min 1 page, no max
    }
    section(5, &mems, &mut module);
    section(8, &[0], &mut module); // start: func 0
    let mut body = vec![0]; // no locals
    for m in 0..memories {
        body.push(0x41); // i32.const (sleb128; the values used are < 2^13)
        uleb(u64::from(grow_pages), &mut body);
        body.extend_from_slice(&[0x40, m, 0x1a]); // memory.grow m; drop
    }
    body.push(0x0b);
    let mut code = vec![1];
    uleb(body.len() as u64, &mut code);
    code.extend_from_slice(&body);
    section(10, &code, &mut module);

    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component); // core module section
    section(2, &[1, 0x00, 0, 0], &mut component); // core instance: instantiate module 0, no args
    component
}

async fn instantiate(memories: u8) -> Result<(), wasmtime::Error> {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(cache.path()).unwrap();
    let bytes = component(memories, 320); // 20 MiB each
    let component = wasmtime::component::Component::from_binary(&runtime.engine, &bytes)?;
    let sandbox = SandboxConfig::default(); // memory_mb = 64
    let state = PluginState::new(
        "memories".into(),
        "t".into(),
        &sandbox,
        GuestStderr::new(1024),
        SigningGrant::default(),
        super::http::HttpGate::new(runtime.http_client(), &[], 16, 1 << 20),
        None,
    )
    .unwrap();
    let mut store = runtime.new_store(state);
    store.data_mut().deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let linker = wasmtime::component::Linker::new(&runtime.engine);
    linker
        .instantiate_async(&mut store, &component)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn several_memories_share_one_cap() {
    // Three memories of 21 MiB: 63 MiB in all, under 64.
    instantiate(3).await.expect("three memories fit");
    // Four: each under the cap alone, 84 MiB together.
    let error = instantiate(4)
        .await
        .expect_err("four memories exceed the cap");
    let exceeded = error
        .downcast_ref::<MemoryLimitExceeded>()
        .unwrap_or_else(|| panic!("not the memory cap: {error:#}"));
    assert!(exceeded.desired > exceeded.limit, "{exceeded}");
}

#[test]
fn a_component_with_too_many_memories_is_refused_at_load() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(cache.path()).unwrap();
    let five =
        wasmtime::component::Component::from_binary(&runtime.engine, &component(5, 0)).unwrap();
    let error = super::check_resources("five.wasm", &five)
        .unwrap_err()
        .to_string();
    assert!(error.contains("declares 5 linear memories"), "{error}");
    let four =
        wasmtime::component::Component::from_binary(&runtime.engine, &component(4, 0)).unwrap();
    super::check_resources("four.wasm", &four).unwrap();
}
