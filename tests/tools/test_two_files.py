"""tools/two_files.py: dmba's tables as two organisations' files."""

import csv

from tools import two_files


def test_split_gives_the_features_as_shipped_and_shuffled_labels_with_ids_on_one_side_only(
        tmp_path):
    features, labels = two_files.split("eBayAuctions", tmp_path)
    with open(features, newline="") as handle:
        feature_rows = list(csv.reader(handle))
    with open(labels, newline="") as handle:
        label_rows = list(csv.reader(handle))
    assert feature_rows[0] == ["id", "Category", "currency", "sellerRating", "Duration", "endDay",
                               "ClosePrice", "OpenPrice"]
    assert label_rows[0] == ["id", "Competitive?"]
    feature_ids = {row[0] for row in feature_rows[1:]}
    label_ids = [row[0] for row in label_rows[1:]]
    assert len(feature_ids - set(label_ids)) == two_files.ONLY_IN_FEATURES
    assert len(set(label_ids) - feature_ids) == two_files.ONLY_IN_LABELS
    assert label_ids != sorted(label_ids)  # shuffled: the order tells the data party nothing
    assert feature_rows[1][1] == "Music/Movie/Game"  # the cells untouched
