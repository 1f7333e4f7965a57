"""shards.readers: every layout listed from tiny fixtures, labels frame for frame, clear errors, real clips."""

import itertools
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from layouts import LAYOUTS, frame_level, mat_cell, ranges_matrix, write_frames, write_layout, write_video

from shards.readers import DATASETS, ReaderError, Video, check_labels, list_videos, probe, read_frames

SPLITS_OF = {name: ("train",) if name == "ucfcrime" else ("train", "test") for name in LAYOUTS}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    parent = tmp_path_factory.mktemp("layouts")
    return {name: write_layout(name, parent) for name in LAYOUTS}


@pytest.mark.parametrize("name,split", [(n, s) for n in LAYOUTS for s in SPLITS_OF[n]])
def test_layout_lists_ids_classes_counts_and_labels(layouts, name, split):
    layout = layouts[name]
    skipped = []
    videos = list_videos(layout.dataset, layout.root, split, skipped=skipped)
    expected = layout.expected[split]
    assert {v.video_id for v in videos} == set(expected)
    assert [v.video_id for v in list_videos(layout.dataset, layout.root, split)] == [v.video_id for v in videos]
    for v in videos:
        want = expected[v.video_id]
        assert v.split == split
        assert v.label_class == want.label_class, v.video_id
        assert probe(v).num_frames == want.num_frames, v.video_id
        if want.labels is None:
            assert v.labels is None, v.video_id
        else:
            assert v.labels.dtype == np.uint8
            np.testing.assert_array_equal(v.labels, want.labels, err_msg=v.video_id)
    assert sorted(Path(p).name for p, _ in skipped) == sorted(layout.skipped.get(split, []))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_read_frames_streams_every_frame_in_order(layouts, name):
    layout = layouts[name]
    for video in list_videos(layout.dataset, layout.root, SPLITS_OF[name][-1]):
        frames = read_frames(video)
        assert isinstance(frames, types.GeneratorType)  # streamed, never a list
        info = probe(video)
        count = 0
        for i, frame in enumerate(frames):
            assert frame.dtype == np.uint8 and frame.shape == (info.height, info.width, 3) == (24, 32, 3)
            assert abs(float(frame.mean()) - (frame_level(i) + 30 * 36 / 768)) < 12, (video.video_id, i)
            count += 1
        assert count == info.num_frames, video.video_id


def test_container_and_fps_of_frame_folders(layouts):
    ped = list_videos("ped2", layouts["ped2-original"].root, "test")
    assert probe(ped[0]).fps == 10.0
    assert isinstance(ped[0].source, list) and ped[0].source[0].suffix == ".tif"
    avi = list_videos("avenue", layouts["avenue-videos"].root, "train")[0]
    assert isinstance(avi.source, Path) and probe(avi).fps == 25.0


def test_ped2_m_mat_and_bmp_labels_agree(layouts):
    by_layout = {}
    for name in ("ped2-original-m", "ped2-original-bmp", "ped2-original", "ped2-frames"):
        videos = list_videos("ped2", layouts[name].root, "test")
        by_layout[name] = {v.video_id: v.labels.tolist() for v in videos}
    assert by_layout["ped2-original-m"]["testing/02"] == [0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    for name, labels in by_layout.items():
        assert labels == by_layout["ped2-frames"], name


def test_list_split_picks_the_official_list(layouts):
    ucf = list_videos("ucf101", layouts["ucf101"].root, "train", list_split=2)
    assert [v.video_id for v in ucf] == ["v_Archery_g01_c02"]
    with pytest.raises(ReaderError, match=r"hmdb51: no <class>_test_split3\.txt"):
        list_videos("hmdb51", layouts["hmdb51"].root, "train", list_split=3)
    with pytest.raises(ReaderError, match="no train videos found"):
        list_videos("hmdb51", layouts["hmdb51"].root, "train", list_split=2)  # every tag 0


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_root_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ReaderError) as e:
        list_videos("ped2", tmp_path / "nowhere")
    assert _one_line(e) == f"ped2: root {tmp_path / 'nowhere'} does not exist or is not a folder"
    with pytest.raises(ReaderError) as e:
        list_videos("kinetics", tmp_path)
    assert _one_line(e).startswith("unknown dataset 'kinetics': expected one of jester, ucf101,")
    with pytest.raises(ReaderError, match="unknown split 'val'"):
        list_videos("ped2", tmp_path, "val")
    with pytest.raises(ReaderError, match="only the train split"):
        list_videos("ucfcrime", tmp_path, "test")


@pytest.mark.parametrize("dataset", [d for d in DATASETS if d != "videofolder"])
def test_wrong_layout_is_one_clear_line(layouts, dataset):
    wrong = layouts["videofolder"].root  # videos, but none of the dataset layouts
    with pytest.raises(ReaderError) as e:
        list_videos(dataset, wrong, "train")
    message = _one_line(e)
    assert message.startswith(f"{dataset}: ") and str(wrong) in message


def test_empty_videofolder(tmp_path):
    (tmp_path / "x.txt").write_text("no videos")
    with pytest.raises(ReaderError, match=f"videofolder: no video files or frame folders under {tmp_path}$"):
        list_videos("videofolder", tmp_path)


def test_label_length_mismatch_names_the_video(tmp_path):
    # ShanghaiTech: .npy mask one frame short
    st = tmp_path / "st"
    write_frames(st / "testing" / "frames" / "01_0014", 10)
    (st / "testing" / "test_frame_mask").mkdir(parents=True)
    np.save(st / "testing" / "test_frame_mask" / "01_0014.npy", np.zeros(9, np.uint8))
    with pytest.raises(ReaderError, match=r"^video 01_0014: 9 labels for 10 frames"):
        list_videos("shanghaitech", st, "test")
    # Ped2 .mat: a range past the end of the video
    ped = tmp_path / "ped2"
    write_frames(ped / "testing" / "frames" / "01", 10)
    write_frames(ped / "testing" / "frames" / "02", 10)
    scipy.io.savemat(ped / "ped2.mat", {"gt": mat_cell([ranges_matrix([(2, 4)]), ranges_matrix([(5, 11)])])})
    with pytest.raises(ReaderError, match=r"^video testing/02: anomaly range 5:11 outside its 10 frames"):
        list_videos("ped2", ped, "test")
    scipy.io.savemat(ped / "ped2.mat", {"gt": mat_cell([ranges_matrix([(2, 4)])])})
    with pytest.raises(ReaderError, match=r"ped2\.mat: 1 label entries in 'gt' for 2 test videos$"):
        list_videos("ped2", ped, "test")
    # UCSD .m: the same check
    orig = tmp_path / "UCSDped1"
    write_frames(orig / "Test" / "Test001", 8, ext="tif", start=1)
    (orig / "Test" / "UCSDped1.m").write_text("TestDataset{1}.gt_frame = [3:9];\n")
    with pytest.raises(ReaderError, match=r"^video Test001: anomaly range 3:9 outside its 8 frames"):
        list_videos("ped1", tmp_path, "test")
    # a video file: the builder checks after decoding
    folder = tmp_path / "vf"
    write_video(folder / "cls" / "clip.avi", 10)
    np.save(folder / "cls" / "clip.npy", np.zeros(12, np.uint8))
    (video,) = list_videos("videofolder", folder, "test")
    with pytest.raises(ReaderError, match=r"^video cls/clip: 12 labels for 10 frames \(.*clip\.avi\)$"):
        check_labels(video, probe(video).num_frames)


def test_missing_labels_and_bad_lists(tmp_path):
    av_root = tmp_path / "avenue"
    write_video(av_root / "testing_videos" / "01.avi", 10)
    with pytest.raises(ReaderError, match="avenue: no ground_truth_demo/testing_label_mask/"):
        list_videos("avenue", av_root, "test")
    orig = tmp_path / "UCSDped2"
    write_frames(orig / "Test" / "Test004", 8, ext="tif", start=1)
    with pytest.raises(ReaderError, match=r"ped2: no labels for Test004: expected an entry in UCSDped2\.m"):
        list_videos("ped2", orig, "test")
    jester = tmp_path / "j"
    write_frames(jester / "20bn-jester-v1" / "7", 3, digits=5, start=1)
    (jester / "jester-v1-train.csv").write_text("7,Thumb Up\n")
    with pytest.raises(ReaderError, match=r"jester-v1-train\.csv:1: expected 'id;label'"):
        list_videos("jester", jester)


def test_duplicate_ids_are_refused(tmp_path):
    write_video(tmp_path / "a" / "x.avi", 10)
    write_video(tmp_path / "a" / "x.mp4", 10)
    with pytest.raises(ReaderError, match="video id 'a/x' appears twice"):
        list_videos("videofolder", tmp_path)


def test_unreadable_video_is_a_reader_error(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ReaderError, match="bad.avi: cannot open video"):
        probe(Video("bad", bad, "train"))


# name: (frames, height, width), from ../shared/data/real-clips/SOURCES.md
REAL = {"ucf101_like_eye_makeup.avi": (164, 240, 320), "kinetics_like_pool.mp4": (300, 256, 340),
        "kinetics_like_arm_wrestling.mp4": (280, 256, 340), "rawvideo_part0.mp4": (32, 256, 340),
        "ntu_like_S001C001P001R001A001.avi": (103, 1080, 1920),
        "street_pedestrians_vtest.avi": (795, 576, 768), "tree_window.avi": (68, 240, 320),
        "street_bikes.mp4": (250, 272, 640), "carphone.mp4": (120, 144, 176)}
FULLY_DECODED = {"ucf101_like_eye_makeup.avi", "rawvideo_part0.mp4", "tree_window.avi", "carphone.mp4"}


def test_real_clips_probe_and_decode(real_clips):
    videos = list_videos("videofolder", real_clips)
    assert {v.video_id for v in videos} == {Path(n).stem for n in REAL}
    for video in videos:
        name = video.source.name
        info = probe(video)
        assert (info.num_frames, info.height, info.width) == REAL[name], name
        assert info.fps > 0
        frames = read_frames(video)
        if name in FULLY_DECODED:  # codecs: mpeg4, h264, cinepak (AVI index lists dropped frames)
            count = 0
            for frame in frames:
                assert frame.shape == (info.height, info.width, 3) and frame.dtype == np.uint8
                count += 1
            assert count == info.num_frames, name
        else:
            first = list(itertools.islice(frames, 3))
            frames.close()
            assert [f.shape for f in first] == [(info.height, info.width, 3)] * 3, name
            assert first[0].std() > 5, name  # real picture content, not a blank frame


def test_avenue_volume_masks_as_one_array(tmp_path):
    write_video(tmp_path / "testing_videos" / "01.avi", 10)
    volume = np.zeros((24, 32, 10), np.uint8)
    volume[5, 6, [2, 3, 7]] = 1
    (tmp_path / "testing_label_mask").mkdir()
    scipy.io.savemat(tmp_path / "testing_label_mask" / "1_label.mat", {"volLabel": volume})
    (video,) = list_videos("avenue", tmp_path, "test")
    assert video.video_id == "testing/01"
    assert video.labels.tolist() == [0, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    check_labels(video, probe(video).num_frames)  # the builder's check passes
