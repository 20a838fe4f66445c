import numpy as np
import pytest

from anyaccel_sidecar import sidecar_pb2 as pb
from anyaccel_sidecar import tensors
from anyaccel_sidecar.errors import BadRequest


def test_round_trip_is_little_endian_f32():
    a = np.array([[0.0, -1.5, 3.25], [1e30, -0.0, 7.0]], dtype=np.float32)
    msg = tensors.encode(a)
    assert list(msg.shape) == [2, 3]
    assert msg.data[4:8] == np.float32(-1.5).astype("<f4").tobytes()
    back = tensors.decode(pb.Tensor.FromString(msg.SerializeToString()), "x", rank=2)
    assert back.flags.writeable and back.dtype == np.float32
    np.testing.assert_array_equal(back, a)


def test_wrong_length_and_rank_are_bad_requests():
    with pytest.raises(BadRequest, match="needs 24 bytes"):
        tensors.decode(pb.Tensor(shape=[2, 3], data=b"\0" * 20), "x")
    with pytest.raises(BadRequest, match="rank-4"):
        tensors.decode(pb.Tensor(shape=[2, 3], data=b"\0" * 24), "sample", rank=4)


def test_token_ids():
    ids = tensors.decode_ids(pb.EncodeTextRequest(shape=[2, 3], ids=[1, 2, 3, 4, 5, 6]))
    assert ids.dtype == np.int64 and ids.tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(BadRequest):
        tensors.decode_ids(pb.EncodeTextRequest(shape=[2, 3], ids=[1]))
