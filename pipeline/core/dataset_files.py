"""The canonical dataset's file names, for the dataset stage that writes them and the layout that locates them.
Kept apart from both so that a change to where other artifacts live does not change the dataset's (and the
trained model's) code dependencies."""
SPLITS = ("train", "val", "test")
DATASET_ARRAYS = tuple(f"{split}_{kind}.npy" for split in SPLITS for kind in ("images", "labels"))
