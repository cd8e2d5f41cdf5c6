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
