//! `backroom bench aggregate`: the coordinator's weighted FedAvg on updates stored as files, with
//! its time and peak memory, so it can be compared with other frameworks on identical inputs
//! (`benches/aggregate_vs_flower.py`).
//!
//! Input: `client_00000.f32`, `client_00001.f32`, … (raw little-endian f32, all the same length,
//! no header) and `weights.json` (`{"num_examples": [n0, n1, …]}`, one per client file in name
//! order). Output: the weighted mean in the same raw format.
//!
//! Memory does not grow with the clients, nor with the parameters: the parameter range is cut
//! into blocks small enough for a block's f64 sum to stay in cache while every client's matching
//! bytes are read into it (positioned reads, each input byte read once), and each finished block
//! is written straight to its place in the output. Threads take blocks in turn.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use backroom_coordinator::aggregate::accumulate_weighted_le;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Weights {
    num_examples: Vec<u64>,
}

/// What one aggregation measured.
#[derive(Debug, Serialize)]
pub struct AggregateReport {
    pub clients: usize,
    pub parameters: usize,
    /// Reading the files, summing them and writing the mean (to a temporary file).
    pub aggregate_ms: f64,
    /// Including moving the output into place.
    pub total_ms: f64,
    /// Peak resident set size of this process (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
    pub output: PathBuf,
}

/// The client files of `dir`, in name order.
fn client_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("client_") && n.ends_with(".f32"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Aggregates `input_dir` into `output` on `threads` threads (default: one per core).
pub fn run(
    input_dir: &Path,
    output: &Path,
    threads: Option<usize>,
) -> anyhow::Result<AggregateReport> {
    let started = Instant::now();
    let files = client_files(input_dir)?;
    if files.is_empty() {
        bail!("{} holds no client_*.f32 files", input_dir.display());
    }
    let weights_path = input_dir.join("weights.json");
    let text = std::fs::read_to_string(&weights_path)
        .with_context(|| format!("cannot read {}", weights_path.display()))?;
    let weights: Weights = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not {{\"num_examples\": [..]}}",
            weights_path.display()
        )
    })?;
    if weights.num_examples.len() != files.len() {
        bail!(
            "{} lists {} clients, the directory holds {} client files",
            weights_path.display(),
            weights.num_examples.len(),
            files.len()
        );
    }
    let bytes = std::fs::metadata(&files[0])
        .with_context(|| format!("cannot inspect {}", files[0].display()))?
        .len();
    if bytes == 0 || bytes % 4 != 0 {
        bail!(
            "{} is {bytes} bytes: not a non-empty array of f32",
            files[0].display()
        );
    }
    let parameters = usize::try_from(bytes / 4)?;
    let mut opened = Vec::with_capacity(files.len());
    for (path, &n) in files.iter().zip(&weights.num_examples) {
        if n == 0 {
            bail!("{}: num_examples must be positive", path.display());
        }
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot inspect {}", path.display()))?
            .len();
        if len != bytes {
            bail!(
                "{} is {len} bytes, {} is {bytes}: every client file must be the same length",
                path.display(),
                files[0].display()
            );
        }
        opened.push((path.as_path(), n as f64));
    }
    let total_weight: f64 = opened.iter().map(|(_, w)| w).sum();
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(16)))
        .max(1);
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("cannot create a file in {}", parent.display()))?;
    temp.as_file()
        .set_len(bytes)
        .with_context(|| format!("cannot size {}", temp.path().display()))?;
    let job = Job {
        parameters,
        total_weight,
        output: temp.as_file(),
        threads,
        block: BLOCK,
    };
    if opened.len() <= FILES_AT_ONCE {
        // Every file open at once: each block is summed over all clients and written, with one
        // block of sum per thread.
        let handles = open_all(&opened)?;
        job.on_threads(|t| job.single_pass(&handles, t))?;
    } else {
        // More clients than open files allowed: each file is opened once, group by group, and
        // every thread keeps the sums of its blocks (O(parameters) in all) until the last group.
        let mut sums: Vec<Vec<f64>> = (0..threads)
            .map(|t| vec![0.0; job.blocks_of(t).count() * job.block])
            .collect();
        let mut input: Vec<Vec<u8>> = (0..threads).map(|_| vec![0u8; job.block * 4]).collect();
        for group in opened.chunks(FILES_AT_ONCE) {
            let handles = open_all(group)?;
            std::thread::scope(|scope| {
                let workers: Vec<_> = sums
                    .iter_mut()
                    .zip(input.iter_mut())
                    .enumerate()
                    .map(|(t, (sum, input))| {
                        let (job, handles) = (&job, &handles);
                        scope.spawn(move || job.add_group(handles, t, sum, input))
                    })
                    .collect();
                join_all(workers)
            })?;
        }
        job.on_threads(|t| job.write_blocks(t, &sums[t]))?;
    }
    let aggregate_ms = started.elapsed().as_secs_f64() * 1e3;
    temp.persist(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(AggregateReport {
        clients: files.len(),
        parameters,
        aggregate_ms,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
        peak_rss_bytes: peak_rss_bytes(),
        output: output.to_owned(),
    })
}

/// Parameters per block: 32 Ki f64 of sum (256 KiB) stay in a core's L2 cache. (Larger blocks,
/// meaning fewer reads per client, measured no faster here.)
const BLOCK: usize = 32 * 1024;
/// Client files open at once (well under the usual limit of 1024 descriptors).
const FILES_AT_ONCE: usize = 256;

type Handle<'a> = (std::fs::File, &'a Path, f64);

fn open_all<'a>(clients: &[(&'a Path, f64)]) -> anyhow::Result<Vec<Handle<'a>>> {
    clients
        .iter()
        .map(|(path, weight)| {
            std::fs::File::open(path)
                .map(|f| (f, *path, *weight))
                .with_context(|| format!("cannot open {}", path.display()))
        })
        .collect()
}

/// One aggregation, shared by its threads. Thread `t` owns blocks `t`, `t + threads`, ….
struct Job<'a> {
    parameters: usize,
    total_weight: f64,
    output: &'a std::fs::File,
    threads: usize,
    block: usize,
}

fn join_all(
    workers: Vec<std::thread::ScopedJoinHandle<'_, anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    workers.into_iter().try_for_each(|w| {
        w.join()
            .unwrap_or_else(|_| bail!("aggregation thread panicked"))
    })
}

impl Job<'_> {
    fn on_threads(&self, work: impl Fn(usize) -> anyhow::Result<()> + Sync) -> anyhow::Result<()> {
        std::thread::scope(|scope| {
            let work = &work;
            join_all(
                (0..self.threads)
                    .map(|t| scope.spawn(move || work(t)))
                    .collect(),
            )
        })
    }

    fn blocks_of(&self, thread: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (parameters, step, size) = (self.parameters, self.threads, self.block);
        (thread..parameters.div_ceil(size))
            .step_by(step)
            .map(move |block| (block * size, size.min(parameters - block * size)))
    }

    /// Each of the thread's blocks summed over every client, divided and written.
    fn single_pass(&self, handles: &[Handle<'_>], thread: usize) -> anyhow::Result<()> {
        let mut sum = vec![0f64; self.block];
        let mut input = vec![0u8; self.block * 4];
        for (start, len) in self.blocks_of(thread) {
            let sum = &mut sum[..len];
            sum.fill(0.0);
            accumulate(handles, sum, &mut input[..len * 4], (start * 4) as u64)?;
            self.write(start, sum)?;
        }
        Ok(())
    }

    /// Adds one group of clients into the thread's block sums.
    fn add_group(
        &self,
        handles: &[Handle<'_>],
        thread: usize,
        sums: &mut [f64],
        input: &mut [u8],
    ) -> anyhow::Result<()> {
        for (k, (start, len)) in self.blocks_of(thread).enumerate() {
            let sum = &mut sums[k * self.block..k * self.block + len];
            accumulate(handles, sum, &mut input[..len * 4], (start * 4) as u64)?;
        }
        Ok(())
    }

    fn write_blocks(&self, thread: usize, sums: &[f64]) -> anyhow::Result<()> {
        for (k, (start, len)) in self.blocks_of(thread).enumerate() {
            self.write(start, &sums[k * self.block..k * self.block + len])?;
        }
        Ok(())
    }

    /// Divides a block's sum and writes it at its place in the output.
    fn write(&self, start: usize, sum: &[f64]) -> anyhow::Result<()> {
        let out: Vec<u8> = sum
            .iter()
            .flat_map(|s| ((s / self.total_weight) as f32).to_le_bytes())
            .collect();
        write_all_at(self.output, &out, (start * 4) as u64).context("cannot write the output")
    }
}

fn accumulate(
    handles: &[Handle<'_>],
    sum: &mut [f64],
    input: &mut [u8],
    offset: u64,
) -> anyhow::Result<()> {
    for (file, path, weight) in handles {
        read_exact_at(file, input, offset)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !accumulate_weighted_le(sum, input, *weight) {
            bail!(
                "{} refused: a value in bytes {offset}..{} is not finite",
                path.display(),
                offset + input.len() as u64
            );
        }
    }
    Ok(())
}

#[cfg(unix)]
fn write_all_at(file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_all_at(file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(buf)
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Peak resident set size of this process so far: `VmHWM` from `/proc/self/status` (Linux;
/// 0 where that file does not exist).
pub fn peak_rss_bytes() -> u64 {
    proc_status_bytes("self", "VmHWM:")
}

/// Resident set size of this process now: `VmRSS` (0 where `/proc` does not exist).
pub fn rss_bytes() -> u64 {
    proc_status_bytes("self", "VmRSS:")
}

/// Resident set size now and its peak (`VmRSS`, `VmHWM`) of another process, in bytes (0 where
/// `/proc/PID/status` cannot be read).
pub fn rss_of(pid: u32) -> (u64, u64) {
    let pid = pid.to_string();
    (
        proc_status_bytes(&pid, "VmRSS:"),
        proc_status_bytes(&pid, "VmHWM:"),
    )
}

/// A `… kB` field of `/proc/PROCESS/status`, in bytes (0 when absent).
fn proc_status_bytes(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_f32(path: &Path, values: &[f32]) {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn aggregates_weighted_and_names_the_bad_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_f32(&dir.path().join("client_00000.f32"), &[1.0, 2.0]);
        write_f32(&dir.path().join("client_00001.f32"), &[4.0, -1.0]);
        std::fs::write(
            dir.path().join("weights.json"),
            r#"{"num_examples": [1, 3]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("mean.f32");
        let report = run(dir.path(), &out, None).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((report.clients, report.parameters), (2, 2));
        assert!(report.peak_rss_bytes > 0);
        let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("{e}"));
        let mean: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(mean, vec![3.25, -0.25]);

        write_f32(&dir.path().join("client_00002.f32"), &[1.0]);
        let error = run(dir.path(), &out, None).expect_err("count mismatch");
        assert!(error.to_string().contains("lists 2 clients"), "{error:#}");
        std::fs::write(
            dir.path().join("weights.json"),
            r#"{"num_examples": [1, 3, 1]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let error = run(dir.path(), &out, None).expect_err("short file");
        assert!(
            format!("{error:#}").contains("client_00002.f32"),
            "{error:#}"
        );
        write_f32(&dir.path().join("client_00002.f32"), &[f32::INFINITY, 0.0]);
        let error = run(dir.path(), &out, None).expect_err("non-finite");
        assert!(format!("{error:#}").contains("not finite"), "{error:#}");
    }

    #[test]
    fn many_clients_and_many_blocks_match_a_plain_weighted_mean() {
        for (clients, parameters, threads) in [(300usize, 3usize, 2usize), (3, 70_000, 3)] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let mut expected = vec![0f64; parameters];
            let mut counts = Vec::new();
            for c in 0..clients {
                let values: Vec<f32> = (0..parameters)
                    .map(|j| ((c * 31 + j * 7) % 101) as f32 / 10.0 - 5.0)
                    .collect();
                let n = (c % 9 + 1) as u64;
                for (e, v) in expected.iter_mut().zip(&values) {
                    *e += n as f64 * f64::from(*v);
                }
                counts.push(n);
                write_f32(&dir.path().join(format!("client_{c:05}.f32")), &values);
            }
            let total: u64 = counts.iter().sum();
            std::fs::write(
                dir.path().join("weights.json"),
                serde_json::json!({ "num_examples": counts }).to_string(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let out = dir.path().join("mean.f32");
            let report = run(dir.path(), &out, Some(threads)).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!((report.clients, report.parameters), (clients, parameters));
            let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("{e}"));
            for (j, b) in bytes.chunks_exact(4).enumerate() {
                let got = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let want = (expected[j] / total as f64) as f32;
                assert_eq!(got, want, "parameter {j} of {clients}x{parameters}");
            }
        }
    }
}
