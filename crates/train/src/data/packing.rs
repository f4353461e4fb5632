//! Packing: several examples in one sequence without attending to each other. Each packed row
//! carries segment numbers; the model restarts positions and masks attention per segment, and the
//! first token of each segment gets no label (it must not be predicted from the previous example),
//! so that the loss of a packed batch equals the loss of the same examples unpacked.

use super::Example;

/// Packs examples in order, greedily, into rows of at most `max_len` tokens.
pub fn pack(examples: &[Example], max_len: usize) -> Vec<Example> {
    let mut rows: Vec<Example> = Vec::new();
    let mut cur = Example { ids: Vec::new(), labels: Vec::new(), segments: Some(Vec::new()) };
    let mut seg = 0u32;
    for e in examples {
        if !cur.ids.is_empty() && cur.ids.len() + e.ids.len() > max_len {
            rows.push(std::mem::replace(
                &mut cur,
                Example { ids: Vec::new(), labels: Vec::new(), segments: Some(Vec::new()) },
            ));
            seg = 0;
        }
        cur.ids.extend_from_slice(&e.ids);
        // The first label of a segment would be predicted from the previous segment's last token.
        cur.labels.push(None);
        cur.labels.extend_from_slice(&e.labels[1..]);
        cur.segments.as_mut().expect("packed rows have segments").extend(std::iter::repeat_n(seg, e.ids.len()));
        seg += 1;
    }
    if !cur.ids.is_empty() {
        rows.push(cur);
    }
    rows
}
