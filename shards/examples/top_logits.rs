use hearth_shards::*;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let m = Model::open(std::path::Path::new(&a[1]), 2).unwrap();
    let ids = m.tokenizer().encode(&a[2], true, true);
    let chunk: usize = a.get(3).map_or(ids.len(), |s| s.parse().unwrap());
    let st = m.full_stage().unwrap();
    let mut c = st.new_cache(512);
    let mut out = Vec::new();
    for ch in ids.chunks(chunk) {
        st.forward(&mut c, StageInput::Tokens(ch), &mut out).unwrap();
    }
    let mut idx: Vec<usize> = (0..out.len()).collect();
    idx.sort_by(|&x, &y| out[y].total_cmp(&out[x]));
    println!("top {:?}", idx[..5].iter().map(|&i| (i, out[i])).collect::<Vec<_>>());
    println!("l0_10 {:?}", &out[..10]);
}
