//! The fuzz targets' seed corpus (fuzz/corpus/), replayed in the normal suite: every seed goes
//! through the job-file parser, the binary COPY decoder and the HTTP page decoder, whole and
//! mutated (bytes flipped, cut short, chunked differently), and nothing panics. The well-formed
//! seeds decode to what they hold. `bash fuzz/run.sh` fuzzes from the same seeds.

use proptest::prelude::*;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn well_formed_seeds_decode_to_what_they_hold() {
    for (name, data) in seeds("job_file") {
        assert_eq!(
            recon::fuzzing::job_file(&data),
            name != "broken.toml",
            "{name}"
        );
    }
    let rows: Vec<(String, Option<usize>)> = seeds("copy_decoder")
        .into_iter()
        .map(|(n, d)| (n, recon::fuzzing::copy_decoder(&d)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("bool_date_ts".into(), Some(10)),
            ("floats_bytea_uuid".into(), Some(3)),
            ("ints_text_numeric_tstz".into(), Some(20)),
            // NaN in a numeric column is refused, not read as something else.
            ("numeric_bpchar".into(), None),
        ]
    );
    let pages: Vec<Option<usize>> = seeds("http_page")
        .iter()
        .map(|(_, d)| recon::fuzzing::http_page(d))
        .collect();
    assert_eq!(pages, vec![Some(6), Some(2), None]);
}

fn mutated() -> impl Strategy<Value = (usize, usize, u8, usize)> {
    (any::<usize>(), any::<usize>(), any::<u8>(), any::<usize>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_seeds_never_panic((which, at, byte, cut) in mutated()) {
        for target in ["job_file", "copy_decoder", "http_page"] {
            let all = seeds(target);
            let (_, mut data) = all[which % all.len()].clone();
            if !data.is_empty() {
                let i = at % data.len();
                data[i] ^= byte;
                data.truncate(data.len() - cut % (data.len() / 4 + 1));
            }
            match target {
                "job_file" => { let _ = recon::fuzzing::job_file(&data); }
                "copy_decoder" => { let _ = recon::fuzzing::copy_decoder(&data); }
                _ => { let _ = recon::fuzzing::http_page(&data); }
            }
        }
    }
}
