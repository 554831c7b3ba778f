"""How a model is judged: the validation split, the out-of-domain check sets and the everyday
posts, one table (``sentistream evaluate --suite``)."""
