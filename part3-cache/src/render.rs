//! The article as a fully rendered HTML page: what the article calls
//! "fully rendered blog articles" in the cache.
//!
//! Every user-written text (title, body, author name, comments) goes
//! through [`escape`] before it reaches the page, so a stored `<script>`
//! is shown as text, never run. Caching a rendered page makes this matter
//! more, not less: an unescaped page in the cache is served to every
//! reader until it expires.
//!
//! Simplified: one `format!` and a five-character escape, because the page
//! is small and the lesson is the cache. A production site uses a template
//! engine that escapes by default (askama, maud, minijinja), so forgetting
//! to escape takes effort instead of the reverse.

use std::fmt::Write;

use part2_database::articles::ArticlePage;

/// Escapes text for an HTML element's content or a quoted attribute: the
/// five characters that can end a text node or an attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The article's page: title, author, body, counts, latest comments.
pub fn article_page(page: &ArticlePage) -> String {
    let a = &page.summary;
    let mut comments = String::new();
    for c in &page.comments {
        // Writing to a String cannot fail.
        let _ = writeln!(
            comments,
            "<li id=\"comment-{}\"><p>{}</p><small>user {}, at {}</small></li>",
            c.id,
            escape(&c.body),
            c.author_id,
            c.created_at
        );
    }
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{title}</title></head>\n<body>\n\
         <article id=\"article-{id}\">\n<h1>{title}</h1>\n<p class=\"byline\">by {author}, at {at}</p>\n\
         <div class=\"body\">{body}</div>\n<p class=\"counts\">{likes} likes, {ncomments} comments</p>\n\
         <ol class=\"comments\">\n{comments}</ol>\n</article>\n</body>\n</html>\n",
        id = a.id,
        title = escape(&a.title),
        author = escape(&a.author_name),
        at = a.published_at,
        body = escape(&page.body),
        likes = a.like_count,
        ncomments = a.comment_count,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use part2_database::articles::{ArticleSummary, CommentView};

    #[test]
    fn the_five_characters_are_escaped_and_nothing_else() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("中 😀 plain"), "中 😀 plain");
    }

    #[test]
    fn no_user_text_reaches_the_page_raw() {
        let evil = "<script>alert(1)</script>";
        let page = ArticlePage {
            summary: ArticleSummary {
                id: 7,
                author_id: 1,
                author_name: evil.into(),
                title: evil.into(),
                published_at: 0,
                comment_count: 1,
                like_count: 0,
            },
            body: evil.into(),
            comments: vec![CommentView {
                id: 1,
                article_id: 7,
                author_id: 2,
                body: evil.into(),
                created_at: 0,
            }],
        };
        let html = article_page(&page);
        assert!(!html.contains("<script"), "{html}");
        assert_eq!(html.matches("&lt;script&gt;").count(), 5, "{html}");
    }
}
