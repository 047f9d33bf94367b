fn main() {
    let s = qunfa_safety::Safety::defaults();
    let mut sc = qunfa_safety::CheckScratch::default();
    for t in std::env::args().skip(1) {
        let v = s.check(&t, 6, &mut sc).unwrap();
        println!("{t}: {:?} risk {:.3}", v.action, v.risk);
        for h in &v.hits {
            println!("   {:?} {} {} {:?} {}", h.gate, h.category, h.rule, h.action, h.en);
        }
    }
}
