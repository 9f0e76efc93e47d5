//! Build a tar index natively: `build_index BLOB OUT_META [--zinfo OUT_ZINFO] [--aufs]
//! [--span BYTES]`. The blob is streamed from disk in 1 MiB pieces, as the component will
//! receive it; prints the stats as `key=value` lines. `--verify` (plain tars only) then opens
//! `META ‖ tar` with our EROFS reader and walks the whole tree (erofs-image `verify`).

use std::io::Read;

use erofs_component::build::{IndexOptions, Indexer};

fn main() {
    if let Err(e) = run() {
        eprintln!("build_index: {e}");
        std::process::exit(1);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = IndexOptions::default();
    let mut positional = Vec::new();
    let mut zinfo_out = None;
    let mut verify = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--aufs" => options.aufs = true,
            "--verify" => verify = true,
            "--zinfo" => zinfo_out = Some(it.next().ok_or("--zinfo needs a path")?.clone()),
            "--span" => {
                options.span = it
                    .next()
                    .ok_or("--span needs a size")?
                    .parse()
                    .map_err(|e| format!("--span: {e}"))?
            }
            _ => positional.push(a.clone()),
        }
    }
    let [blob, meta_out] = positional.as_slice() else {
        return Err(
            "usage: build_index BLOB OUT_META [--zinfo OUT_ZINFO] [--aufs] [--span BYTES]".into(),
        );
    };
    let mut file = std::fs::File::open(blob).map_err(|e| format!("{blob}: {e}"))?;
    let mut indexer = Indexer::new(options).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("{blob}: {e}"))?;
        if n == 0 {
            break;
        }
        indexer.write(&buf[..n]).map_err(|e| e.to_string())?;
    }
    let index = indexer.finish().map_err(|e| e.to_string())?;
    std::fs::write(meta_out, &index.meta).map_err(|e| format!("{meta_out}: {e}"))?;
    match (&index.zinfo, &zinfo_out) {
        (Some(z), Some(path)) => std::fs::write(path, z).map_err(|e| format!("{path}: {e}"))?,
        (Some(_), None) => return Err("the blob is gzip: give --zinfo OUT_ZINFO".into()),
        (None, Some(_)) => return Err("the blob is a plain tar: it has no zinfo".into()),
        (None, None) => {}
    }
    let s = &index.stats;
    println!("meta_size={}", index.meta.len());
    println!("entries={}\ninodes={}", s.entries, s.inodes);
    println!(
        "blob_size={}\ntar_size={}\ntar_parsed={}",
        s.blob_size, s.tar_size, s.tar_parsed
    );
    println!(
        "blob_sha256={}\ntar_sha256={}",
        hex(&s.blob_sha256),
        hex(&s.tar_sha256)
    );
    println!("checkpoints={}\nspan={}", s.checkpoints, s.span);
    for n in &s.notes {
        println!("note={n}");
    }
    if verify {
        if index.zinfo.is_some() {
            return Err("--verify reads plain tars only".into());
        }
        let tar = std::fs::read(blob).map_err(|e| format!("{blob}: {e}"))?;
        let mut dev = Mem([index.meta.clone(), tar].concat());
        let fs = erofs_image::Filesystem::open(&mut dev).map_err(|e| format!("verify: {e:?}"))?;
        let report = fs
            .verify(&mut dev, Default::default())
            .map_err(|e| format!("verify: {e:?}"))?;
        println!("verify=ok\nverify_entries={}", report.entries);
    }
    Ok(())
}

struct Mem(Vec<u8>);

impl erofs_image::ReadAt for Mem {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), erofs_image::Error> {
        let start = usize::try_from(offset).map_err(|_| erofs_image::Error::Io("offset".into()))?;
        let src = self
            .0
            .get(start..start.saturating_add(buf.len()))
            .ok_or_else(|| erofs_image::Error::Io(format!("read past the end at {offset}")))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}
