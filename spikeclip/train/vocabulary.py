"""Words the recipe uses besides a dataset's own class names: a broad vocabulary of object
names for text alignment (so that labels never seen in image training land somewhere sensible
in the student's text space), and each dataset's two label experiments (SpikeCLIP's "replace"
and "expand")."""

from __future__ import annotations

# CIFAR-100's classes (public class list of the dataset).
CIFAR100_CLASSES = [
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow tree", "wolf", "woman", "worm",
]  # fmt: skip

# Other everyday objects, clothing and accessories, animals and vehicles.
OTHER_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    "hat", "cap", "scarf", "glove", "sock", "belt", "tie", "skirt", "shorts", "jeans", "blouse",
    "sweater", "hoodie", "vest", "suit", "uniform", "pajamas", "swimsuit", "raincoat", "poncho",
    "boot", "slipper", "high heel", "loafer", "flip flop", "backpack", "wallet", "purse",
    "suitcase", "umbrella", "watch", "necklace", "bracelet", "ring", "earring", "sunglasses",
    "helmet", "mask", "apron", "glasses", "button", "zipper", "hanger", "towel", "blanket",
    "pillow", "curtain", "carpet", "mirror", "window", "door", "fence", "ladder", "bench",
    "desk", "shelf", "cabinet", "drawer", "stool", "sofa", "bathtub", "sink", "toilet",
    "refrigerator", "oven", "microwave", "toaster", "kettle", "teapot", "mug", "glass", "fork",
    "knife", "spoon", "pan", "pot", "basket", "box", "bucket", "candle", "vase", "book",
    "pencil", "pen", "scissors", "hammer", "screwdriver", "wrench", "saw", "axe", "shovel",
    "broom", "key", "lock", "coin", "banknote", "envelope", "camera", "laptop", "computer",
    "printer", "phone", "radio", "guitar", "piano", "violin", "drum", "trumpet", "ball",
    "balloon", "kite", "doll", "teddy bear", "puzzle", "bicycle helmet", "skateboard", "surfboard",
    "ski", "tent", "flag", "map", "globe", "compass", "anchor", "sailboat", "canoe", "submarine",
    "helicopter", "bus stop", "traffic light", "fire hydrant", "parking meter", "van", "taxi",
    "ambulance", "fire engine", "scooter", "wheelchair", "cow", "pig", "sheep", "goat", "chicken",
    "duck", "goose", "owl", "eagle", "parrot", "penguin", "zebra", "giraffe", "monkey", "gorilla",
    "panda", "koala", "hedgehog", "bat", "octopus", "jellyfish", "starfish", "goldfish",
    "banana", "strawberry", "grape", "lemon", "pineapple", "watermelon", "carrot", "potato",
    "tomato", "broccoli", "corn", "bread", "cake", "pizza", "sandwich", "cookie", "egg",
    "cheese", "tree", "flower", "leaf", "grass", "rock", "river", "lake", "beach", "island",
    "bridge", "tower", "church", "barn", "digit", "number", "letter", "handwriting",
]  # fmt: skip

# Templates for text alignment, besides the dataset's own: the class name at many positions and
# in many contexts (measured on Fashion-MNIST: 8 more templates lifted the student's "replace"
# accuracy by ~1.5 points).
ALIGNMENT_TEMPLATES = [
    "a photo of a {}.", "a {}.", "a photo of the {}.", "a close-up photo of a {}.",
    "a cropped photo of a {}.", "a good photo of a {}.", "a photo of my {}.",
    "a bright photo of a {}.", "a drawing of a {}.", "there is a {} in the picture.",
]  # fmt: skip

# "replace": a few classes evaluated under another name; "expand": distractor names added to
# the candidates. The replacement names are kept out of the text-alignment vocabulary, so the
# student has never been trained on them. Per dataset a list of named experiments, the first
# the headline one: "paper" where SpikeCLIP defines it (CIFAR-10: horse -> zebra, ship -> boat;
# expand by the 10 CIFAR-100 names the official code uses), then our own as extra rows.
LABEL_EXPERIMENTS = {
    "fashion-mnist": [{
        "name": "ours",
        "replace": {"sneaker": "running shoe", "coat": "jacket", "bag": "handbag"},
        "expand": ["hat", "scarf", "sock", "glove", "belt", "umbrella", "watch", "backpack",
                   "necklace", "sunglasses"],
    }],
    "cifar10": [{
        "name": "paper",
        "replace": {"horse": "zebra", "ship": "boat"},
        "expand": ["apple", "aquarium fish", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
                   "bottle", "bowl"],
    }, {
        "name": "ours",
        "replace": {"horse": "zebra", "ship": "boat", "automobile": "car"},
        "expand": ["apple", "bicycle", "castle", "dolphin", "lamp", "maple tree", "rocket",
                   "television", "tiger", "tractor"],
    }],
    "mnist": [{
        "name": "ours",
        "replace": {"the digit 0": "the number zero", "the digit 1": "the number one"},
        "expand": ["the letter A", "the letter B", "the letter C", "the letter X", "a star",
                   "a heart", "an arrow", "a circle", "a square", "a triangle"],
    }],
}  # fmt: skip
LABEL_EXPERIMENTS["mnist-5k"] = LABEL_EXPERIMENTS["mnist"]


def label_experiments(dataset: str, class_names: list[str]) -> list[dict]:
    """Every label experiment of `dataset` (the headline first): {"name", "replace": names with
    some renamed, "renamed", "expand": distractors}; none when the dataset defines none or its
    class names differ from the defaults."""
    out = []
    for spec in LABEL_EXPERIMENTS.get(dataset, []):
        if not set(spec["replace"]) <= set(class_names):
            return []
        replaced = [spec["replace"].get(name, name) for name in class_names]
        extra = [name for name in spec["expand"] if name not in class_names]
        out.append({"name": spec["name"], "replace": replaced, "renamed": dict(spec["replace"]),
                    "expand": extra})  # fmt: skip
    return out


def label_experiment(dataset: str, class_names: list[str]) -> dict | None:
    """The headline label experiment of `dataset` (label_experiments' first), or None."""
    experiments = label_experiments(dataset, class_names)
    return experiments[0] if experiments else None


def alignment_vocabulary(class_names: list[str], dataset: str | None = None) -> list[str]:
    """The dataset's class names first, then the broad vocabulary, without duplicates and
    without the names the dataset's "replace" experiment evaluates under."""
    held_out = {new for spec in LABEL_EXPERIMENTS.get(dataset or "", [])
                for new in spec["replace"].values()}  # fmt: skip
    names, seen = [], set()
    for name in [*class_names, *CIFAR100_CLASSES, *OTHER_NAMES]:
        key = name.lower()
        if key in seen or name in held_out:
            continue
        seen.add(key)
        names.append(name)
    return names
