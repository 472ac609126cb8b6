"""label-indexer: joins pose, perception and heartbeat per vehicle-second, labels each second
with the taxonomy and writes the label table (dwd_label_second) and the hourly bitmap index."""
