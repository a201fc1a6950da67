use automerge::sync::{Message, State, SyncDoc};
use hearth_protocol::history::{self, DocId};
use std::time::Instant;
fn main() {
    let dir = std::path::Path::new("/tmp/fx1000/history");
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().map_or(false, |e| e == "automerge") && !p.ends_with("index.automerge")
        })
        .take(20)
        .collect();
    let (mut tf, mut tr, mut tc, mut tfa) = (0.0, 0.0, 0.0, 0.0);
    for f in &files {
        let id: DocId = f.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let b = std::fs::read(f).unwrap();
        let mut a = automerge::AutoCommit::load(&b).unwrap();
        let t = Instant::now();
        let _fa = a.fork();
        tfa += t.elapsed().as_secs_f64();
        let mut bd = history::new_doc(id);
        let (mut sa, mut sb) = (State::new(), State::new());
        for _ in 0..10 {
            let m = a.sync().generate_sync_message(&mut sa);
            let mut any = false;
            if let Some(m) = m {
                any = true;
                let m = Message::decode(&m.encode()).unwrap();
                let t = Instant::now();
                let mut trial = bd.fork();
                tf += t.elapsed().as_secs_f64();
                let t = Instant::now();
                trial.sync().receive_sync_message(&mut sb, m).unwrap();
                tr += t.elapsed().as_secs_f64();
                let t = Instant::now();
                history::check(&trial, id).unwrap();
                tc += t.elapsed().as_secs_f64();
                bd = trial;
            }
            if let Some(m) = bd.sync().generate_sync_message(&mut sb) {
                any = true;
                a.sync().receive_sync_message(&mut sa, m).unwrap();
            }
            if !any {
                break;
            }
        }
    }
    let n = files.len() as f64;
    println!(
        "per doc: fork(new) {:.2} ms, receive {:.2} ms, check {:.2} ms, fork(full) {:.2} ms",
        tf / n * 1e3,
        tr / n * 1e3,
        tc / n * 1e3,
        tfa / n * 1e3
    );
}
