"""Checks for notebook 07 (two processes): each says right or not yet, never the answer."""

import hmac
import json
import re

from . import answered, verdict


def _header(raw):
    """The JSON header of a captured frame, tagged (after the handshake) or not."""
    from network import wire

    _, _, header_length, body_length = wire.PREFIX.unpack(raw[:wire.PREFIX.size])
    tagged = len(raw) > wire.PREFIX.size + header_length + body_length
    start = wire.PREFIX.size + (wire.TAG_BYTES if tagged else 0)
    return json.loads(raw[start:start + header_length])


def check_1(answer, frames):
    """answer = the data party's proof (bytes), recomputed from the token and the two nonces;
    right when it is the proof the `welcome` frame carried in the captured ``frames``."""
    if not answered(answer):
        return False
    if not isinstance(answer, (bytes, bytearray)):
        return verdict(False, "give the proof as bytes")
    sent_by_data = bytes.fromhex(_header(frames["data->label"][1])["proof"])
    sent_by_label = bytes.fromhex(_header(frames["label->data"][0])["proof"])
    if hmac.compare_digest(bytes(answer), sent_by_label):
        return verdict(False, "that is the label party's proof: whose role goes into the info string?")
    return verdict(hmac.compare_digest(bytes(answer), sent_by_data),
                   "not the proof in the welcome frame: check the salt's order and the info string")


def check_2(answer, data_run):
    """answer = the number of frames the data party received in the training session, predicted
    from the transcript; compared with the data party's own connection counter."""
    if not answered(answer):
        return False
    received = data_run.channel.connection.frames_received
    if not isinstance(answer, int):
        return verdict(False, "give a whole number of frames")
    if answer < received:
        return verdict(False, "too few: did you count the handshake, the streamed blocks and the end?")
    return verdict(answer == received, "too many")


def check_3(answer, frames):
    """answer = the bytes per id in the body of the `data ids, blinded` frame (data → label),
    measured on the captured ``frames``."""
    if not answered(answer):
        return False
    from network import wire

    for raw in frames["data->label"][2:]:
        header = _header(raw)
        if header.get("type") == "message" and header["declaration"]["name"] == "data ids, blinded":
            _, _, header_length, body_length = wire.PREFIX.unpack(raw[:wire.PREFIX.size])
            per_id = body_length / header["layout"]["shape"][0]
            return verdict(answer == per_id, "not the bytes per id of that frame's body")
    return verdict(False, "the captured frames hold no 'data ids, blinded' message")


def check_4(answer):
    """answer = the refusal (the TransportError's text) of a frame from another session put in
    place of label → data frame 1: right when it names the first check that fails, the prefix tag."""
    if not answered(answer):
        return False
    text = str(answer)
    # The wire's own wording (wire.Connection's tag check), so only the error itself passes:
    # "refused <what>: the <part> tag of <peer>'s frame <n> does not verify (...)".
    match = re.fullmatch(r"refused .+: the (\w+) tag of the label party's frame (\d+) does not "
                         r"verify \(altered, truncated or forged on the way\)", text.strip())
    if match is None or match.group(2) != "1":
        return verdict(False, "give the text of the error raised when the data party reads frame 1")
    return verdict(match.group(1) == "prefix", "that is not the first check the old frame fails")
