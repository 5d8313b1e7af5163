from past.scoring import contains, exact_match, is_correct, normalize, score_all, token_f1


def test_normalize_strips_case_punctuation_articles() -> None:
    assert normalize("The  Quick, brown fox!") == "quick brown fox"


def test_exact_match_and_f1() -> None:
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert token_f1("Paris, France", "Paris") == 2 * (0.5 * 1.0) / 1.5
    assert token_f1("", "Paris") == 0.0 and token_f1("", "") == 1.0
    assert token_f1("London", "Paris") == 0.0


def test_contains_is_word_aligned() -> None:
    assert contains("It costs 42 credits.", "42 credits") == 1.0
    assert contains("It costs 142 credits.", "42 credits") == 0.0
    assert score_all("x", "y") == {"exact_match": 0.0, "token_f1": 0.0, "contains": 0.0}


def test_is_correct_rejects_the_right_unit_with_the_wrong_number() -> None:
    assert token_f1("12 seconds", "5 seconds") == 0.5 and not is_correct("12 seconds", "5 seconds")
    assert is_correct("5", "5 seconds")  # F1 0.67: the value without its unit
    assert is_correct("Hold it for 5 seconds.", "5 seconds")  # contained
    assert not is_correct("", "5 seconds") and not is_correct("It costs 250 credits", "240 credits")
