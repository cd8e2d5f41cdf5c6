import numpy as np
import pandas as pd

from components.semantic_ids.encoder import encode_texts, item_texts


def test_packaged_encoder_embeds_offline_and_similar_items_are_closer():
    items = pd.DataFrame(
        {
            "title": ["OPI Nail Lacquer, Red", "Essie Nail Polish, Ruby", "Argan Oil Shampoo"],
            "brand": ["OPI", None, "Maple"],
            "categories": [["Makeup", "Nails"], ["Makeup", "Nails"], ["Hair Care", "Shampoos"]],
        }
    )
    texts = item_texts(items)
    assert texts[0] == "OPI Nail Lacquer, Red | OPI | Makeup > Nails"
    assert texts[1] == "Essie Nail Polish, Ruby | Makeup > Nails"  # no empty brand field
    embeddings = encode_texts(texts, batch_size=2)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2]


# Ten fixed items and the SIDs they must get on every machine (residual k-means with 2 levels of 3
# codes, a uniqueness level of 4). A change here means every trace, model and number downstream
# changes too: update the pin only together with a note in the README's data section.
PINNED_ITEMS = [
    ("OPI Nail Lacquer, Big Apple Red", "OPI", ["Beauty", "Makeup", "Nails", "Nail Polish"]),
    ("Essie Nail Polish, Ballet Slippers", "Essie", ["Beauty", "Makeup", "Nails", "Nail Polish"]),
    ("Seche Vite Dry Fast Top Coat", "Seche", ["Beauty", "Makeup", "Nails", "Top Coats"]),
    ("Argan Oil Moisturizing Shampoo", "Maple Holistics", ["Beauty", "Hair Care", "Shampoos"]),
    ("Tea Tree Special Shampoo", "Paul Mitchell", ["Beauty", "Hair Care", "Shampoos"]),
    ("Deep Conditioning Hair Mask", None, ["Beauty", "Hair Care", "Conditioners"]),
    ("Vitamin C Serum for Face", "TruSkin", ["Beauty", "Skin Care", "Face", "Serums"]),
    ("Hyaluronic Acid Moisturizer", "CeraVe", ["Beauty", "Skin Care", "Face", "Moisturizers"]),
    ("Eau de Parfum Spray, 3.4 oz", "Calvin Klein", ["Beauty", "Fragrance", "Women"]),
    ("Cologne for Men, 4.2 oz", "Davidoff", ["Beauty", "Fragrance", "Men"]),
]
# Per item, the sum of its embedding's grid coordinates (integers): a checksum of the encoder output.
PINNED_GRID_SUMS = [-1919, -3036, 16369, -3355, -12561, -11994, -24552, -7762, -20198, -28128]
PINNED_CODES = [[1, 1, 1], [1, 1, 0], [1, 2, 0], [2, 0, 0], [0, 0, 3], [2, 1, 0], [2, 1, 2], [2, 1, 3], [0, 2, 2], [0, 1, 2]]


def test_pinned_catalogue_gets_the_same_sids_on_every_machine():
    from components.semantic_ids.quantize import quantize

    items = pd.DataFrame(PINNED_ITEMS, columns=["title", "brand", "categories"])
    embeddings = encode_texts(item_texts(items), batch_size=4)
    grid = embeddings.astype(np.float64) * 2.0**16
    assert np.array_equal(np.round(grid), grid)  # every coordinate on the grid
    assert grid.sum(axis=1).astype(np.int64).tolist() == PINNED_GRID_SUMS
    codes = quantize(embeddings, levels=2, codebook_size=3, last_level_size=4, iterations=20, seed=0).codes
    assert codes.tolist() == PINNED_CODES
